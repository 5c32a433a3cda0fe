"""Every on-disk format, built tiny in tmp_path: read, detect, cache, and each bad input."""

import csv
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsl.data import images, load_dataset, readers
from fsl.data.episodes import EpisodeShape, read_episode_file, source_record_path, write_episode_file
from fsl.data.store import DataSet
from fsl.errors import DataError, FslError
from fsl.evaluate import sample_episodes

CLASSES = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
PER_CLASS = 4


def colour(name: str, i: int) -> tuple[int, int, int]:
    k = int(name[1:])
    return (k * 30 % 256, i * 40 % 256, 255 - k * 20)


def save_image(path: Path, name: str, i: int, size: int = 20, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), colour(name, i))
    (img.convert("1") if mode == "1" else img).save(path)


def make_split_folders(root: Path) -> Path:
    for split, names in CLASSES.items():
        for name in names:
            for i in range(PER_CLASS):
                save_image(root / split / name / f"{name}_{i}.jpg", name, i)
    return root


def make_ravi(root: Path) -> Path:
    root.mkdir()
    for split, names in CLASSES.items():
        with (root / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            for name in names:
                for i in range(PER_CLASS):
                    file = f"{name}{i:08d}.jpg"
                    save_image(root / "images" / file, name, i)
                    w.writerow([file, name])
    return root


def make_course(root: Path) -> Path:
    root.mkdir()
    for split, names in (("train", CLASSES["train"] + CLASSES["val"]), ("val", CLASSES["test"])):
        with (root / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "filename", "label"])
            for name in names:
                for i in range(PER_CLASS):
                    save_image(root / split / f"{name}_{i}.png", name, i)
                    w.writerow([f"{name}{i}", f"{name}_{i}.png", name])
    return root


def array_split(names: list[str]) -> tuple[np.ndarray, list[str]]:
    images = np.stack([np.full((84, 84, 3), colour(n, i), dtype=np.uint8) for n in names for i in range(PER_CLASS)])
    return images, [n for n in names for _ in range(PER_CLASS)]


def make_l2l(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    for split, stem in (("train", "train"), ("val", "validation"), ("test", "test")):
        images, labels = array_split(CLASSES[split])
        class_dict = {n: [i for i, lab in enumerate(labels) if lab == n] for n in CLASSES[split]}
        with (root / f"mini-imagenet-cache-{stem}.pkl").open("wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    return root


def make_metaoptnet(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    for split, stem in (("train", "train_phase_train"), ("val", "val"), ("test", "test")):
        images, labels = array_split(CLASSES[split])
        numeric = [int(n[1:]) for n in labels]
        with (root / f"miniImageNet_category_split_{stem}.pickle").open("wb") as f:
            pickle.dump({"data": images, "labels": numeric}, f, protocol=2)
    return root


def make_omniglot_like(root: Path) -> Path:
    for a, alphabet in enumerate(["Greek", "Latin"]):
        for c in range(5):
            for i in range(PER_CLASS):
                save_image(root / alphabet / f"character{c:02d}" / f"{a}{c}_{i}.png", f"n{a * 5 + c}", i,
                           size=30, mode="1")
    return root


def zip_tree(tree: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                zf.write(p, Path("top") / p.relative_to(tree))
    return archive


@pytest.mark.parametrize("maker, fmt", [
    (make_split_folders, "split-folders"), (make_ravi, "ravi"), (make_l2l, "l2l-pickle"),
    (make_metaoptnet, "metaoptnet-pickle"),
])
def test_mini_imagenet_formats_read_to_the_same_store(tmp_path, maker, fmt):
    root = maker(tmp_path / "data")
    assert readers.detect_format(root) == fmt
    data = load_dataset(str(root))
    for split, names in CLASSES.items():
        store = data.split(split)
        assert store.images.shape == (len(names) * PER_CLASS, 3, 84, 84)  # Mini-ImageNet's size
        assert store.n_classes == len(names)
        expected = [n if fmt != "metaoptnet-pickle" else str(int(n[1:])) for n in names]
        assert sorted(store.class_names) == sorted(expected)
        # every image of a class has that class's colour (labels follow images)
        for row in range(0, store.images.shape[0], 3):
            name = store.class_names[int(store.labels[row])]
            k = int(name.lstrip("n"))
            assert abs(int(store.images[row, 0, 40, 40]) - k * 30 % 256) <= 2


def test_course_format_tests_on_val_and_validates_on_a_seeded_share_of_train(tmp_path):
    root = make_course(tmp_path / "course")
    assert readers.detect_format(root) == "course"
    data = load_dataset(str(root))
    assert sorted(data.split("test").class_names) == CLASSES["test"]
    train, val = set(data.split("train").class_names), set(data.split("val").class_names)
    assert train | val == set(CLASSES["train"] + CLASSES["val"]) and not train & val and val
    assert any("val.csv is used as the test split" in note for note in data.notes)


def test_a_nested_greyscale_tree_is_split_by_class_and_read_at_28px_grey(tmp_path):
    root = make_omniglot_like(tmp_path / "omni")
    assert readers.detect_format(root) == "class-folders"
    data = load_dataset(str(root))
    assert data.channels == 1 and data.image_size == 28
    names = [n for s in data.splits.values() for n in s.class_names]
    assert sorted(names) == sorted(f"{a}/character{c:02d}" for a in ("Greek", "Latin") for c in range(5))
    again = load_dataset(str(root))
    assert [s.class_names for s in again.splits.values()] == [s.class_names for s in data.splits.values()]


def test_a_zip_of_a_tree_reads_like_the_folder(tmp_path):
    tree = make_omniglot_like(tmp_path / "omni")
    archive = zip_tree(tree, tmp_path / "omni.zip")
    a, b = load_dataset(str(tree)), load_dataset(str(archive))
    for split in a.splits:
        assert a.split(split).class_names == b.split(split).class_names
        assert torch.equal(a.split(split).images, b.split(split).images)


def test_a_split_list_file_assigns_classes(tmp_path):
    root = make_omniglot_like(tmp_path / "omni")
    listing = tmp_path / "splits.txt"
    listing.write_text("\n".join([f"train,Greek/character{c:02d}" for c in range(5)]
                                 + [f"test,Latin/character{c:02d}" for c in range(5)]))
    data = readers.read(root, opts=readers.ReadOptions(split_file=str(listing)))
    assert all(n.startswith("Greek") for n in data.split("train").class_names)
    assert data.split("test").n_classes == 5 and "val" not in data.splits


def test_size_channels_and_rotations_can_be_overridden(tmp_path):
    root = make_omniglot_like(tmp_path / "omni")
    data = load_dataset(str(root), image_size=20, channels=3, rotations=True)
    plain = load_dataset(str(root), image_size=20, channels=3)
    assert data.channels == 3 and data.image_size == 20
    train, base = data.split("train"), plain.split("train")
    assert train.n_classes == 4 * base.n_classes
    rotated = train.images[train.labels == base.n_classes][0]  # first class, turned 90 degrees
    assert torch.equal(rotated, torch.rot90(base.images[base.labels == 0][0], 1, dims=(1, 2)))


def record_decodes(monkeypatch) -> list:
    """The arguments of every image decode from now on (an empty list: the cache was hit)."""
    calls: list = []
    real_decode = readers._decode
    monkeypatch.setattr(readers, "_decode", lambda *a: calls.append(a) or real_decode(*a))
    return calls


def test_the_cache_is_hit_then_invalidated_by_a_changed_source(tmp_path, monkeypatch):
    root = make_split_folders(tmp_path / "data")
    first = load_dataset(str(root))
    calls = record_decodes(monkeypatch)
    load_dataset(str(root))
    assert calls == []  # a hit: nothing decoded
    save_image(root / "train" / "n01" / "n01_0.jpg", "n07", 3)  # same name, new content and mtime
    changed = load_dataset(str(root))
    assert len(calls) == 1 and changed.fingerprint != first.fingerprint
    assert not torch.equal(changed.split("train").images, first.split("train").images)


def test_an_image_rewritten_in_place_with_its_size_and_mtime_is_decoded_again(tmp_path):
    """`cp -p`, `rsync -a` and `tar x` keep a file's size and mtime: the fingerprint (names, sizes,
    mtimes, the same on every machine) stays, but the cache must not serve the old pixels."""
    import os

    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        for c in range(2):
            (root / split / f"{split}{c}").mkdir(parents=True)
            for i in range(2):  # BMP: the file size depends only on the image size
                Image.new("RGB", (16, 16), (40 * c, 60 * i, 90)).save(root / split / f"{split}{c}" / f"{i}.bmp")
    first = load_dataset(str(root))
    target = root / "train" / "train0" / "0.bmp"
    stat = target.stat()
    Image.new("RGB", (16, 16), (255, 255, 255)).save(target)  # new content, the same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime, as cp -p leaves it
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again = load_dataset(str(root))
    assert again.fingerprint == first.fingerprint and again.source_id == first.source_id
    assert not torch.equal(again.split("train").images, first.split("train").images)
    assert int(again.split("train").images.max()) == 255


def test_a_load_that_fails_while_writing_the_cache_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    root = make_split_folders(tmp_path / "data")
    real_save = DataSet.save

    def half_save(self, folder):
        np.save(folder / "train_images.npy", np.zeros(3))
        raise OSError("disk full")

    monkeypatch.setattr(DataSet, "save", half_save)
    with pytest.raises(FslError, match="cannot write .*: disk full"):  # one line for the CLI, not a traceback
        load_dataset(str(root))
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []
    monkeypatch.setattr(DataSet, "save", real_save)
    assert load_dataset(str(root)).split("train").n_classes == 3


def test_an_episode_file_round_trips_to_the_same_episodes(tmp_path):
    root = make_split_folders(tmp_path / "data")
    data = load_dataset(str(root))
    store = data.split("test")
    episodes = sample_episodes(store, EpisodeShape(2, 1, 2), 3, seed=0, split="test")
    path = tmp_path / "eps" / "episodes.csv"
    write_episode_file(path, data, "test", episodes)
    read = read_episode_file(path, None, 84, 3)  # real file paths: no data set needed
    assert len(read) == 3
    for e, episode in enumerate(read):
        assert torch.equal(episode.support_images, store.images[episodes.support[e]])
        assert torch.equal(episode.query_images, store.images[episodes.query[e]])
        assert episode.query_labels.tolist() == [0, 0, 1, 1]


def test_synthetic_episode_files_name_split_rows(tmp_path, tiny_dataset):
    episodes = sample_episodes(tiny_dataset.split("val"), EpisodeShape(3, 2, 1), 2, seed=1, split="val")
    path = tmp_path / "syn.csv"
    write_episode_file(path, tiny_dataset, "val", episodes)
    assert "val:" in path.read_text()
    read = read_episode_file(path, tiny_dataset)
    assert torch.equal(read[1].support_images, tiny_dataset.split("val").images[episodes.support[1]])


# ---------------------------------------------------------------------------- bad input
def test_an_image_that_will_not_decode_is_named(tmp_path):
    root = make_split_folders(tmp_path / "data")
    bad = root / "train" / "n02" / "n02_1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match="n02_1.jpg"):
        load_dataset(str(root))


def test_not_an_image_is_named(tmp_path):
    root = make_split_folders(tmp_path / "data")
    (root / "val" / "n04" / "notes.png").write_text("hello")
    with pytest.raises(DataError, match="notes.png"):
        load_dataset(str(root))


def test_a_csv_row_naming_a_missing_file_is_reported(tmp_path):
    root = make_ravi(tmp_path / "ravi")
    (root / "images" / "n0200000002.jpg").unlink()
    with pytest.raises(DataError, match="missing file 'n0200000002.jpg'"):
        load_dataset(str(root))


def test_a_csv_with_the_wrong_header_is_reported(tmp_path):
    root = make_ravi(tmp_path / "ravi")
    (root / "val.csv").write_text("file,class\nx.jpg,n04\n")
    with pytest.raises(DataError, match="expected the header filename,label"):
        load_dataset(str(root))


def test_an_episode_whose_support_lacks_a_query_class_is_reported(tmp_path, tiny_dataset):
    path = tmp_path / "bad.csv"
    path.write_text("episode,role,label,path\n0,support,a,test:0\n0,query,b,test:1\n")
    source_record_path(path).write_text(json.dumps({"data_set": "synthetic", "source_id": tiny_dataset.source_id}))
    with pytest.raises(DataError, match=r"episode 0: queries use classes missing from its support: \['b'\]"):
        read_episode_file(path, tiny_dataset)


def test_a_pickle_without_the_expected_keys_is_reported(tmp_path):
    root = make_l2l(tmp_path / "l2l")
    with (root / "mini-imagenet-cache-validation.pkl").open("wb") as f:
        pickle.dump({"images": np.zeros((1, 84, 84, 3), np.uint8)}, f)
    with pytest.raises(DataError, match=r"expected the keys \['image_data', 'class_dict'\]"):
        load_dataset(str(root))


def test_an_empty_folder_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(str(tmp_path / "empty"))


def test_a_class_with_too_few_images_is_named_when_the_sampler_is_built(tmp_path):
    from fsl.data.episodes import EpisodeError, EpisodeSampler

    data = load_dataset(str(make_split_folders(tmp_path / "data")))
    with pytest.raises(EpisodeError, match=r"class 'n0\d' of the test split has 4 images"):
        EpisodeSampler(data.split("test"), EpisodeShape(2, 2, 3), split="test")


class _Payload:
    """A pickled object that, when unpickled by plain `pickle.load`, creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("maker, file, keys", [
    (make_l2l, "mini-imagenet-cache-train.pkl", ("image_data", "class_dict")),
    (make_metaoptnet, "miniImageNet_category_split_train_phase_train.pickle", ("data", "labels")),
])
def test_a_malicious_data_pickle_is_refused_and_runs_nothing(tmp_path, maker, file, keys):
    root = maker(tmp_path / "data")
    marker = tmp_path / "payload-ran"
    with (root / file).open("wb") as f:
        pickle.dump({keys[0]: _Payload(marker), keys[1]: {}}, f, protocol=2)
    with pytest.raises(DataError, match=rf"{file}: refused to load: the pickle references posix\.system"):
        load_dataset(str(root))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    from fsl.data.safe_pickle import load_data_pickle

    path = tmp_path / "arrays.pkl"
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path.write_bytes(pickle.dumps({"a": array, "n": np.int64(7), "l": [1.5, None, "x", (2, b"y")]}, protocol=protocol))
    loaded = load_data_pickle(path)
    assert np.array_equal(loaded["a"], array) and loaded["n"] == 7 and loaded["l"] == [1.5, None, "x", (2, b"y")]


def test_numpy_1_module_names_map_to_numpy_2(tmp_path):
    from fsl.data.safe_pickle import load_data_pickle

    array = np.arange(6, dtype=np.uint8)
    data = pickle.dumps(array, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert np.array_equal(load_data_pickle(path), array)


@pytest.mark.parametrize("dtype, suffix", [(np.uint16, ".png"), (np.int32, ".tif")])  # modes I;16 and I
def test_a_16_bit_gradient_is_scaled_to_8_bits_not_clipped(tmp_path, dtype, suffix):
    gradient = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16)  # 0 .. 65520
    path = tmp_path / f"gradient{suffix}"
    Image.fromarray(gradient.astype(dtype)).save(path)
    with Image.open(path) as saved:
        assert saved.mode in ("I;16", "I")
    expected = np.clip(np.rint(gradient / 257.0), 0, 255).astype(np.uint8)
    decoded = images.decode_image(str(path), 64, 1)[0]
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    assert (decoded == 255).mean() < 0.01  # clipping would leave ~98% of pixels at 255
    assert np.array_equal(images.decode_bytes(path.read_bytes(), 64, 1)[0], decoded)  # predict and serving


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_a_float_tiff_is_scaled_by_its_range_not_blacked_out(tmp_path, scale):
    unit = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    path = tmp_path / "float.tif"
    Image.fromarray(unit * np.float32(scale)).save(path)
    with Image.open(path) as saved:
        assert saved.mode == "F"
    decoded = images.decode_image(str(path), 64, 1)[0]
    assert np.abs(decoded.astype(int) - np.rint(unit * 255)).max() <= 1
    assert np.array_equal(images.decode_bytes(path.read_bytes(), 64, 1)[0], decoded)  # predict and serving


@pytest.mark.parametrize("array, needle", [
    (np.full((8, 8), 2**30, dtype=np.int32), "32-bit integer image with values"),
    (np.full((8, 8), -5, dtype=np.int32), "32-bit integer image with values"),
    (np.full((8, 8), 300.0, dtype=np.float32), "float image with values 300..300"),
    (np.full((8, 8), np.nan, dtype=np.float32), "NaN or infinite"),
])
def test_pixels_that_cannot_be_mapped_to_8_bits_are_refused_naming_the_file(tmp_path, array, needle):
    path = tmp_path / "wide.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(DataError, match=needle) as info:
        images.decode_image(str(path), 8, 1)
    assert "wide.tif" in str(info.value)
    with pytest.raises(DataError, match=needle):
        images.decode_bytes(path.read_bytes(), 8, 1)


def test_an_episode_file_of_rows_refuses_another_data_set(tmp_path, tiny_dataset):
    from fsl.errors import UsageError

    root = make_l2l(tmp_path / "l2l")
    data = load_dataset(str(root))
    episodes = sample_episodes(data.split("test"), EpisodeShape(2, 1, 1), 2, seed=0, split="test")
    path = tmp_path / "ep.csv"
    write_episode_file(path, data, "test", episodes)
    assert "test:" in path.read_text() and source_record_path(path).exists()
    assert read_episode_file(path, data)[0].support_images.shape == (2, 3, 84, 84)
    # the same source at another image size is the same data set: rows mean the same images
    assert len(read_episode_file(path, load_dataset(str(root), image_size=32))) == 2
    with pytest.raises(UsageError, match=r"rows index the data set 'l2l' .* not --data 'synthetic'"):
        read_episode_file(path, tiny_dataset)
    with pytest.raises(UsageError, match="not --data 'synthetic'"):
        read_episode_file(path, lambda: tiny_dataset)  # loaded lazily, as `fsl evaluate` does
    source_record_path(path).unlink()
    with pytest.raises(DataError, match=r"ep.csv.source.json, which says which data set they index, is missing"):
        read_episode_file(path, data)


def test_a_truncated_array_in_the_cache_is_rebuilt_not_fatal(tmp_path):
    root = make_split_folders(tmp_path / "data")
    first = load_dataset(str(root))
    expected, fingerprint = first.split("train").images.clone(), first.fingerprint
    del first  # its arrays are memory-mapped from the file truncated below
    [folder] = [p for p in (Path(__import__("os").environ["FSL_CACHE_DIR"]) / "datasets").iterdir()
                if p.name.startswith("split-folders-") and (p / "meta.json").exists()
                and json.loads((p / "meta.json").read_text())["fingerprint"] == fingerprint]
    npy = folder / "train_images.npy"
    npy.write_bytes(npy.read_bytes()[:200])
    again = load_dataset(str(root))
    assert torch.equal(again.split("train").images, expected)


def test_a_byte_order_mark_in_a_csv_header_is_accepted(tmp_path):
    root = make_ravi(tmp_path / "ravi")
    for split in ("train", "val", "test"):
        path = root / f"{split}.csv"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_dataset(str(root)).split("train").n_classes == 3


@pytest.mark.slow
def test_dead_writers_temporary_folders_are_removed_by_data_cache(tmp_path, monkeypatch):
    import subprocess
    import sys

    from click.testing import CliRunner

    from fsl.cli import cli
    from fsl.files import _temporary_prefix

    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    datasets = tmp_path / "cache" / "datasets"
    code = ("import os, sys; from pathlib import Path; from fsl.files import _temporary_prefix; "
            "p = Path(sys.argv[1]) / (_temporary_prefix('synthetic-x') + 'abc123'); p.mkdir(parents=True); "
            "(p / 'train_images.npy').write_bytes(b'0' * 1000)")
    subprocess.run([sys.executable, "-c", code, str(datasets)], check=True)  # a writer that is gone now
    alive = datasets / (_temporary_prefix("synthetic-y") + "def456")  # this process: alive
    alive.mkdir()
    result = CliRunner().invoke(cli, ["data", "cache"])
    assert result.exit_code == 0 and "removed 1 temporary folder" in result.output
    assert [p.name for p in datasets.iterdir()] == [alive.name]


@pytest.mark.parametrize("edit, needle", [
    (lambda root: (root / "test.csv").open("a").write("n0100000000.jpg,n01\n"),
     "class 'n01' is in the train split and in the test split"),
    (lambda root: (root / "train.csv").open("a").write("n0100000000.jpg,n02\n"),
     "n0100000000.jpg is under two labels, 'n01' and 'n02', in the train split"),
    (lambda root: (root / "train.csv").open("a").write("n0100000000.jpg,n01\n"),
     "n0100000000.jpg is listed twice in class 'n01' of the train split"),
    (lambda root: (root / "test.csv").open("a").write("n0200000000.jpg,n07\n"),
     "n0200000000.jpg is in the train split (class 'n02') and in the test split (class 'n07')"),
])
def test_train_test_leakage_is_an_error_naming_both_places(tmp_path, edit, needle):
    root = make_ravi(tmp_path / "ravi")
    edit(root)
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(str(root))


def test_a_class_in_two_splits_is_an_error_in_every_reader_and_in_data_inspect(tmp_path):
    from click.testing import CliRunner

    from fsl.cli import cli

    root = make_split_folders(tmp_path / "tree")
    save_image(root / "test" / "n01" / "extra.jpg", "n01", 9)  # class n01 is also a test class
    with pytest.raises(DataError, match="class 'n01' is in the train split and in the test split"):
        load_dataset(str(root))
    result = CliRunner().invoke(cli, ["data", "inspect", str(root)])
    assert result.exit_code == 1 and "class 'n01' is in the train split and in the test split" in result.output
    pickles = make_l2l(tmp_path / "l2l")
    with (pickles / "mini-imagenet-cache-test.pkl").open("wb") as f:
        images, labels = array_split(["n01"])
        pickle.dump({"image_data": images, "class_dict": {"n01": list(range(len(labels)))}}, f)
    with pytest.raises(DataError, match="class 'n01' is in the train split and in the test split"):
        load_dataset(str(pickles))


def test_a_tree_with_one_split_folder_is_read_as_that_split_and_inspect_names_the_missing_ones(tmp_path):
    from click.testing import CliRunner

    from fsl.cli import cli

    root = tmp_path / "only-test"
    for name in CLASSES["test"]:
        for i in range(PER_CLASS):
            save_image(root / "test" / name / f"{name}_{i}.jpg", name, i)
    data = load_dataset(str(root))
    assert list(data.splits) == ["test"] and data.split("test").n_classes == 2
    result = CliRunner().invoke(cli, ["data", "inspect", str(root)])
    assert result.exit_code == 0, result.output
    assert "splits: test; missing: train, val (training needs train and val" in result.output
    with pytest.raises(DataError, match="has no 'train' split \\(it has test\\); training needs train and val"):
        data.split("train")


def test_a_cache_on_a_shared_disk_is_adopted_by_another_host_not_rebuilt(tmp_path, monkeypatch):
    import socket

    root = make_split_folders(tmp_path / "data")
    first = load_dataset(str(root))
    calls = record_decodes(monkeypatch)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    again = load_dataset(str(root))
    assert calls == [] and torch.equal(again.split("train").images, first.split("train").images)
    from fsl.data.store import validity_file
    from fsl.files import cache_dir

    [folder] = [p for p in (cache_dir() / "datasets").iterdir() if first.fingerprint.split("-")[0] in p.name]
    assert validity_file(folder).name == "validity-another-host" and validity_file(folder).exists()


FORMATS_FIXTURE = Path(__file__).parent / "fixtures" / "formats-0b8ab85"


@pytest.fixture
def trees_before_the_reader_registry(tmp_path):
    """The trees of tests/fixtures/make_formats.py, as saved by 0b8ab85 (before readers became
    registered objects), extracted with the file times that version hashed."""
    from tests.fixtures.make_formats import set_times

    with zipfile.ZipFile(FORMATS_FIXTURE.with_suffix(".zip")) as zf:
        zf.extractall(tmp_path)
    set_times(tmp_path / "trees")
    return tmp_path


def test_every_format_keeps_the_fingerprint_source_id_and_pixels_of_the_version_before(
        trees_before_the_reader_registry, tmp_path, monkeypatch):
    from tests.fixtures.make_formats import observed

    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "fresh-cache"))
    expected = json.loads(FORMATS_FIXTURE.with_suffix(".json").read_text())
    now = observed(trees_before_the_reader_registry / "trees")
    assert now == {case: {k: v for k, v in values.items() if k != "options"} for case, values in expected.items()}


def test_a_cache_written_before_the_reader_registry_is_used_without_decoding(
        trees_before_the_reader_registry, monkeypatch):
    from tests.fixtures.make_formats import pixel_digest

    root = trees_before_the_reader_registry
    monkeypatch.setenv("FSL_CACHE_DIR", str(root / "cache"))
    monkeypatch.setattr(readers, "decode_all", lambda *a, **k: pytest.fail("decoded again: the cache key changed"))
    data = readers.read(root / "trees" / "class-folders" / "data")
    expected = json.loads(FORMATS_FIXTURE.with_suffix(".json").read_text())["class-folders"]
    assert (data.fingerprint, data.source_id, pixel_digest(data)) == (
        expected["fingerprint"], expected["source_id"], expected["pixels"])


def test_reflections_add_the_mirror_image_of_every_class_as_a_class_and_change_the_fingerprint(tmp_path):
    root = make_omniglot_like(tmp_path / "omni")
    plain = load_dataset(str(root), split_ratio=(0.6, 0.2, 0.2))
    mirrored = load_dataset(str(root), split_ratio=(0.6, 0.2, 0.2), reflections=True)
    for split in plain.splits:
        before, after = plain.split(split), mirrored.split(split)
        assert after.n_classes == 2 * before.n_classes and after.class_names[before.n_classes].endswith("@mirror")
        first = before.images[before.labels == 0][0]
        assert torch.equal(after.images[after.labels == before.n_classes][0], torch.flip(first, dims=(2,)))
    assert mirrored.fingerprint != plain.fingerprint and mirrored.source_id != plain.source_id


def test_the_config_hash_of_a_run_without_reflections_is_the_hash_it_had_before_the_option():
    from fsl.commands.run_identity import config_hash
    from fsl.config import TrainConfig

    params = TrainConfig().resolved().to_params()
    assert params["reflections"] is False
    assert config_hash(params) == config_hash({k: v for k, v in params.items() if k != "reflections"})
    assert config_hash(params | {"reflections": True}) != config_hash(params)


def test_an_int32_tiff_of_8_bit_values_decodes_as_8_bits_not_near_black(tmp_path):
    """W2: mode I says nothing of the depth; values within 0..255 are 8-bit pixels (they were
    divided by 257 and came out near black)."""
    gradient = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(gradient).save(path)
    with Image.open(path) as saved:
        assert saved.mode == "I"
    assert np.array_equal(images.decode_image(str(path), 64, 1)[0], gradient.astype(np.uint8))


def test_the_content_digest_tells_apart_what_the_fingerprint_cannot_and_the_champion_rule_reads_it(tmp_path):
    """W3: the fingerprint hashes names, sizes and mtimes (pinned by the golden tests); a file
    rewritten with its size and mtime kept leaves it alone, the content digest does not, and the
    champion rule compares it (a champion registered before it existed stays comparable)."""
    import os

    from fsl.champion import champion_decision
    from fsl.data import load_dataset

    def tree(root: Path, colour: int) -> Path:
        for c in range(10):
            for i in range(3):
                path = root / f"c{c}" / f"{i}.bmp"  # BMP: the same size whatever the colour
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (colour, c * 20, i * 60)).save(path)
                os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        return root

    one, two = load_dataset(str(tree(tmp_path / "a" / "d", 10))), load_dataset(str(tree(tmp_path / "b" / "d", 200)))
    assert one.fingerprint == two.fingerprint and one.content_digest() != two.content_digest()
    base = {"data_fingerprint": one.fingerprint, "ways": 5}
    promote, why = champion_decision(90.0, base | {"data_content": two.content_digest()},
                                     {"val_acc": 10.0, "protocol": base | {"data_content": one.content_digest()}})
    assert not promote and "data_content" in why
    old_champion = {"val_acc": 10.0, "protocol": base}  # registered before the content digest existed
    assert champion_decision(90.0, base | {"data_content": two.content_digest()}, old_champion)[0]
