""".bin verification sets are read without running anything: plain pickles of every protocol
(and Python 2's) load, anything outside the allow-list is one line and runs nothing."""

import os
import pickle
import re

import numpy as np
import pytest

from facetrip.data.bins import read_bin, read_bins, safe_load
from facetrip.errors import UserError
from tests.data.encoded import encoded_image, write_bin


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("as_array", [False, True])
def test_plain_bins_load_under_every_protocol(tmp_path, protocol, as_array):
    images = [encoded_image(i) for i in range(4)]
    issame = np.array([True, False]) if as_array else [True, False]
    bool_state = np.dtype(bool).__reduce__()
    loaded = read_bin(write_bin(tmp_path / "x.bin", (images, issame), protocol))
    assert loaded.images == images and loaded.issame.tolist() == [True, False]
    assert loaded.name == "x" and len(loaded) == 2
    assert np.dtype(bool).__reduce__() == bool_state  # numpy's own bool dtype untouched


def test_python2_pickles_load_with_their_strings_as_bytes():
    # PROTO 2, [SHORT_BINSTRING 'abc', SHORT_BINSTRING 'defg'], [NEWTRUE], TUPLE2, STOP
    py2 = b"\x80\x02](U\x03abcU\x04defge]\x88a\x86."
    assert safe_load(py2) == ([b"abc", b"defg"], [True])


class _Touch:
    """Unpickling this would create ``path`` (os.system) if anything were run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("payload", ["system", "eval", "object-array", "int-array", "nested"])
def test_anything_else_is_refused_in_one_line_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    content = {
        "system": ([encoded_image(0), encoded_image(1)], [_Touch(marker)]),
        "eval": pickle.loads(pickle.dumps(([b"a", b"b"], [True]))),  # replaced below
        "object-array": ([b"a", b"b"], np.array([True], dtype=object)),
        "int-array": ([b"a", b"b"], np.array([1], dtype=np.int64)),
        "nested": ([b"a", b"b"], [True, {"x": _Touch(marker)}]),
    }[payload]
    data = pickle.dumps(content, protocol=2)
    if payload == "eval":  # a GLOBAL builtins.eval REDUCE'd on a string
        data = (b"\x80\x02cbuiltins\neval\nX" + len(f"open('{marker}','w')").to_bytes(4, "little")
                + f"open('{marker}','w')".encode() + b"\x85R.")
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    with pytest.raises(UserError) as err:
        read_bin(path)
    message = str(err.value)
    assert "\n" not in message and "refused" in message and "nothing in it was run" in message
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ("text", "expected (images, issame)"),
    (([b"a"], [True]), "1 images for 1 pairs"),
    (([b"a", 3], [True]), "list of bytes"),
    (([b"a", b"b"], [2]), "list of bools"),
    (([], []), "at least one pair"),
])
def test_malformed_bins_are_one_line_errors(tmp_path, content, message):
    with pytest.raises(UserError, match=re.escape(message)):
        read_bin(write_bin(tmp_path / "m.bin", content))
    (tmp_path / "cut.bin").write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:10])
    with pytest.raises(UserError, match="not a readable .bin set"):
        read_bin(tmp_path / "cut.bin")
    with pytest.raises(UserError, match="cannot read"):
        read_bin(tmp_path / "absent.bin")


def test_two_sets_with_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_bin(tmp_path / folder / "lfw.bin", ([b"x", b"y"], [True]))
    with pytest.raises(UserError, match="two .bin sets are named 'lfw'"):
        read_bins([tmp_path / "a" / "lfw.bin", tmp_path / "b" / "lfw.bin"])


class _CraftedDtype:
    """numpy's bool dtype pickle with the flags of a dtype that holds Python objects."""

    def __reduce__(self):
        return np.dtype, ("b1", False, True), (3, "|", None, None, None, -1, -1, 63)


class _CraftedArray:
    """numpy's array pickle around :class:`_CraftedDtype`: its bytes would be read as
    object pointers if numpy's own dtype took that state."""

    def __reduce__(self):
        reconstruct = np.array([True]).__reduce__()[0]
        return reconstruct, (np.ndarray, (0,), b"b"), (1, (8,), _CraftedDtype(), False,
                                                        b"\x01" * 8)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_bool_dtype_with_forged_flags_is_refused_before_numpy_sees_it(tmp_path, protocol):
    path = write_bin(tmp_path / "x.bin", ([encoded_image(0)] * 16, _CraftedArray()), protocol)
    with pytest.raises(UserError, match=r"holds a numpy dtype state other than bool's, which "
                                        r"is refused \(nothing in it was run\)$"):
        read_bin(path)
    assert np.dtype(bool).flags == 0
