"""Training on photos: data.align aligns while the decoded cache is built, and every
checkpoint records the alignment with the rest of the preprocessing."""

from facetrip.data.transforms import Preprocessing
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint
from facetrip.training.train import train


def test_a_run_on_photos_records_its_alignment(lfw_photos, tmp_path, tiny_config):
    cfg = tiny_config(lfw_photos, "data.align=mtcnn", "data.align_size=96",
                      f"data.cache={tmp_path / 'cache'}", "data.workers=0",
                      "sampler.batches_per_epoch=1")
    result = train(cfg, tmp_path / "run")
    assert result.steps == 1
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["preprocessing"]["align"] == {"method": "mtcnn", "template": "arcface-112",
                                              "size": 96, "face": "largest", "min_face": 0.1}
    _, saved = model_from_checkpoint(ckpt)
    assert Preprocessing.from_config(saved.data).to_fields() == ckpt["preprocessing"]
    assert (tmp_path / "cache" / "index.json").is_file()


def test_eval_aligns_as_the_checkpoint_records_unless_told(lfw_photos, tmp_path, tiny_config):
    import numpy as np

    from facetrip.evaluation.evaluate import EvalRequest, PairProtocol, evaluate

    cfg = tiny_config(lfw_photos, "data.align=mtcnn", f"data.cache={tmp_path / 'cache'}",
                      "data.workers=0", "sampler.batches_per_epoch=1")
    train(cfg, tmp_path / "run")
    pairs = tmp_path / "pairs.txt"  # LFW format: one fold of 2 same and 2 different pairs
    pairs.write_text("1 2\nAbdullah_Gul 1 2\nAaron_Peirsol 1 2\n"
                     "Abdullah_Gul 1 Aaron_Peirsol 2\nAJ_Cook 1 Abdullah_Gul 2\n")
    request = EvalRequest(model=tmp_path / "run" / "best.pt", data=lfw_photos,
                          protocol=PairProtocol(pairs_file=pairs), ks=(1,))
    aligned = evaluate(request)
    again = evaluate(EvalRequest(**{**request.__dict__, "align": True}))
    plain = evaluate(EvalRequest(**{**request.__dict__, "align": False}))
    np.testing.assert_array_equal(aligned.distances, again.distances)
    assert not np.allclose(aligned.distances, plain.distances)


def test_a_run_on_a_facetrip_align_folder_records_its_alignment(lfw_photos, tmp_path,
                                                                tiny_config):
    from facetrip.alignment.crop import AlignSpec
    from facetrip.data.align import align_folder
    from facetrip.deploy.embedder import load_embedder

    crops = tmp_path / "crops"
    align_folder(lfw_photos, crops, AlignSpec(size=96))
    train(tiny_config(crops, "data.workers=0", "sampler.batches_per_epoch=1"), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["preprocessing"]["align"]["size"] == 96  # from crops/align.json
    embedder = load_embedder(tmp_path / "run" / "best.pt")
    assert embedder.align == AlignSpec(size=96)  # photos are aligned as the crops were
    assert embedder.for_images(crops).align is None  # the crops are not aligned again
    assert embedder.for_images(crops, align=True).align == AlignSpec(size=96)
    assert embedder.for_images(lfw_photos).align == AlignSpec(size=96)
