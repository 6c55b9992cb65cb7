import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from facetrip.data.dataset import FaceDataset, load_rgb
from facetrip.data.decode import decode_rgb
from facetrip.data.index import filter_min_images, scan_identity_folder, split_identities
from facetrip.data.transforms import (
    BatchAugment,
    Normalize,
    Preprocess,
    batch_seed,
    build_transform,
)
from facetrip.errors import UserError
from facetrip.training.build import load_data, resolve_precision
from facetrip.training.loop import StepOptions, train_one_epoch
from facetrip.training.state import TrainState


def _img(path, mode="RGB", size=(20, 24), color=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def dataset_dir(tmp_path):
    _img(tmp_path / "alice" / "1.png")
    _img(tmp_path / "alice" / "2.jpg")
    _img(tmp_path / "alice" / "sub" / "3.bmp", mode="L")
    _img(tmp_path / "bob" / "1.PNG", mode="RGBA")
    _img(tmp_path / "bob" / "2.png", mode="P")
    (tmp_path / "bob" / "notes.txt").write_text("not an image, not an image extension")
    (tmp_path / "bob" / "fake.jpg").write_text("a text file named .jpg")
    (tmp_path / "bob" / "empty.png").write_bytes(b"")
    _img(tmp_path / "carol" / "only.ppm")
    (tmp_path / "dave").mkdir()  # empty identity folder
    _img(tmp_path / "stray.png")  # files at the root are ignored
    return tmp_path


def test_scan_labels_skips_and_ignores(dataset_dir):
    index = scan_identity_folder(dataset_dir)
    assert index.classes == ["alice", "bob", "carol"]
    assert sorted(index.paths) == sorted([
        "alice/1.png", "alice/2.jpg", "alice/sub/3.bmp", "bob/1.PNG", "bob/2.png",
        "carol/only.ppm",
    ])
    assert index.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert sorted(s.path for s in index.skipped) == ["bob/empty.png", "bob/fake.jpg",
                                                      "stray.png"]
    assert index.skip_summary() == "skipped 3 files: 2 not an image, 1 outside identity folders"
    assert index.empty_classes == ["dave"]


def test_empty_and_missing_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_identity_folder(tmp_path / "absent")
    (tmp_path / "x").mkdir()
    _img(tmp_path / "root_only.png")
    with pytest.raises(UserError, match="no identities found"):
        scan_identity_folder(tmp_path)


def test_min_images_filter_and_identity_split(dataset_dir):
    index = scan_identity_folder(dataset_dir)
    kept = filter_min_images(index, 2)
    assert kept.classes == ["alice", "bob"] and kept.labels.tolist() == [0, 0, 0, 1, 1]
    labels = np.repeat(np.arange(20), 3)
    big = type(index)(index.root, [f"{i}.png" for i in range(60)], labels,
                      [str(i) for i in range(20)])
    train, val = split_identities(big, 0.25, seed=0)
    assert len(val.classes) == 5 and len(train.classes) == 15
    assert not set(train.classes) & set(val.classes)
    assert split_identities(big, 0.25, seed=0)[1].classes == val.classes
    assert split_identities(big, 0.0, seed=0)[1] is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "RGB"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    ext = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
    path = _img(tmp_path / f"x.{ext}", mode=mode, color=200 if mode != "I;16" else 40000)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 24)


def test_transform_shapes_and_normalisation():
    img = Image.new("RGB", (50, 40), (255, 0, 128))
    t = build_transform(32, [0.5] * 3, [0.5] * 3, crop_fraction=0.8)
    x = t(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, 16, 16], torch.tensor([1.0, -1.0, 0.0039]), atol=0.01)
    aug = build_transform(32, [0.5] * 3, [0.5] * 3, augment=True)
    assert aug(img).shape == (3, 32, 32)


def test_a_file_broken_after_the_scan_is_replaced_by_the_same_identity(dataset_dir):
    index = filter_min_images(scan_identity_folder(dataset_dir), 2)
    broken = index.paths.index("alice/2.jpg")
    (dataset_dir / "alice" / "2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    ds = FaceDataset(index, build_transform(16, [0.5] * 3, [0.5] * 3))
    x, label = ds[broken]
    assert x.shape == (3, 16, 16) and label == 0 and ds.failures == 1


def _noise(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def test_preprocess_centre_crop_box_crop_and_greyscale():
    img = _noise(50, 40, 0)
    x = F.pil_to_tensor(img)
    centre = Preprocess(32, crop_fraction=0.8)(img)
    assert torch.equal(centre, F.center_crop(x, [32, 32]))
    box = Preprocess(10, crop_box=(0.1, 0.25, 0.3, 0.5))(x)  # 10 x 10 pixels at (5, 10)
    assert torch.equal(box, x[:, 10:20, 5:15])
    grey = Preprocess(16, grayscale=True)(x)
    assert grey.shape == (3, 16, 16) and torch.equal(grey[0], grey[1])
    assert torch.equal(grey[1], grey[2])


def test_a_much_larger_jpeg_is_decoded_at_reduced_scale_with_the_same_result(tmp_path):
    yy, xx = np.mgrid[0:640, 0:800] / 40.0  # a smooth 800 x 640 "photo"
    big = np.stack([np.sin(xx), np.cos(yy), np.sin(xx + yy)], -1) * 100 + 128
    Image.fromarray(big.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    spec = Preprocess(64, crop_fraction=0.9)
    assert spec.reduction(800, 640) == 9  # -> decoded at 1/4 scale: 200 x 160
    fast, full = spec.load(tmp_path / "big.jpg"), spec(decode_rgb(tmp_path / "big.jpg"))
    assert fast.shape == full.shape == (3, 64, 64)
    assert not torch.equal(fast, full)  # really another decode path
    assert (fast.float() - full.float()).abs().mean() < 1.5  # 0..255 scale


def test_batch_augment_is_a_function_of_its_seed_and_normalize_is_exact():
    images = torch.from_numpy(np.stack([np.asarray(_noise(32, 32, i)) for i in range(8)]))
    images = images.permute(0, 3, 1, 2).contiguous()
    plain = Normalize([0.5] * 3, [0.25] * 3)(images)
    assert plain.dtype == torch.float32
    assert torch.allclose(plain, (images.float() / 255 - 0.5) / 0.25, atol=1e-6)
    aug = BatchAugment([0.5] * 3)
    a0, a1 = aug(images, seed=batch_seed(3, 0, 0)), aug(images, seed=batch_seed(3, 1, 0))
    assert torch.equal(aug(images, seed=batch_seed(3, 0, 0)), a0) and not torch.equal(a0, a1)
    assert a0.shape == images.shape and a0.dtype == torch.uint8
    changed = (a0.float() - images.float()).abs().mean(dim=(1, 2, 3))
    assert changed.min() > 1.0  # every image changed (0..255 scale)
    flat = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)  # jitter/erase show on flat
    out = BatchAugment([0.0, 0.5, 1.0])(flat, seed=0)
    erased = (out == torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)).all(1)
    assert 0.05 < erased.flatten(1).any(1).float().mean() < 0.6  # erasing hits some images
    kept = out.permute(1, 0, 2, 3)[:, ~erased].float()  # (3, pixels not erased)
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[1], kept[2])  # still grey
    assert kept.min() >= 159 and kept.max() <= 241 and kept.std() > 5  # brightness x0.8-1.2


def test_the_crop_area_and_the_erasing_probability_are_what_the_config_asks():
    aug = BatchAugment([0.5] * 3, area=(0.3, 0.5), erase_p=0.0)
    u = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0))
    h, w = aug._box(u[:, 0], u[:, 1], aug.area, aug.RATIO, 64, 64)
    share = h * w / 64**2
    assert share.min() > 0.28 and share.max() < 0.52 and share.max() - share.min() > 0.15
    flat = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    fill = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)

    def erased_share(erase_p: float) -> float:
        out = BatchAugment([0.0, 0.5, 1.0], erase_p=erase_p)(flat, seed=1)
        return (out == fill).all(1).flatten(1).any(1).float().mean().item()

    assert erased_share(0.0) == 0.0 and erased_share(1.0) == 1.0


def test_augmented_batches_depend_only_on_seed_and_epoch_also_with_workers(tmp_path,
                                                                          tiny_config):
    for i in range(3):
        for j in range(3):
            _img(tmp_path / f"id{i}" / f"{j}.png", color=(40 * i + 10 * j, 90, 200 - 30 * j))

    def epoch_batches(data, epoch):
        data.sampler.set_epoch(epoch)
        return list(data.train_loader)

    cpu = torch.device("cpu")
    serial = load_data(tiny_config(tmp_path, "seed=5", "data.workers=0"), cpu)
    epoch_0 = epoch_batches(serial, 0)
    after_epoch_0 = epoch_batches(serial, 1)
    resumed = load_data(tiny_config(tmp_path, "seed=5", "data.workers=2"), cpu)  # a resumed run
    torch.manual_seed(123)
    fresh = epoch_batches(resumed, 1)
    assert len(fresh) == len(after_epoch_0) == 2 and fresh[0][0].dtype == torch.uint8
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(fresh, after_epoch_0))
    assert not torch.equal(epoch_0[0][0], after_epoch_0[0][0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_steps_on_cpu(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 14 * 14, 8))
    seen = []

    def loss_fn(emb, labels):
        assert emb.dtype == torch.float32
        seen.append(model[0](torch.zeros(1, 3, 3, 3)).dtype)
        return emb.pow(2).mean(), {}

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    loader = [(images, torch.tensor([0, 0, 1, 1]))] * 2
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    before = model[0].weight.detach().clone()
    state = TrainState(model, opt, sched, scaler)
    train_one_epoch(state, loss_fn, loader,
                    StepOptions(torch.device("cpu"), autocast_dtype=dtype,
                                batch_transform=Normalize([0.5] * 3, [0.5] * 3)))
    assert state.step == state.batch == 2 and not torch.equal(before, model[0].weight)
    assert resolve_precision("auto", torch.device("cpu")) is None
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        resolve_precision("fp16", torch.device("cpu"))


def test_preprocessing_round_trips_through_config_and_sidecar_fields():
    from facetrip.config import load_config
    from facetrip.data.transforms import Preprocess, Preprocessing

    cfg = load_config(None, ["data.image_size=48", "data.crop_box=[0.1, 0.2, 0.9, 0.8]",
                             "data.grayscale=true", "data.mean=[0.4, 0.5, 0.6]",
                             "data.std=[0.2, 0.25, 0.3]"])
    p = Preprocessing.from_config(cfg.data)
    assert p.crop == Preprocess(48, 1.0, (0.1, 0.2, 0.9, 0.8), True)
    assert p.mean == (0.4, 0.5, 0.6) and p.std == (0.2, 0.25, 0.3)
    fields = p.to_fields()
    assert fields == {"input_size": 48, "colour_order": "RGB", "crop_fraction": 1.0,
                      "crop_box": [0.1, 0.2, 0.9, 0.8], "grayscale": True,
                      "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    assert Preprocessing.from_fields(fields) == p
    image = torch.randint(0, 256, (3, 60, 50), dtype=torch.uint8)
    torch.testing.assert_close(p.transform()(image), p.normalize()(p.crop(image)[None])[0])
