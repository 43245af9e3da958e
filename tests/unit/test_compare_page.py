"""The comparison page's structure (every source and image present, pictures exact, metrics right) and
`srcluster compare` end to end: its metrics are `srcluster evaluate`'s, built-ins and smaller-scale models included."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.batches import HRBatches
from srcluster import page as page_module
from srcluster.cli import main
from srcluster.compare import Column, build_page, load_models, plan_from_images, resolve
from srcluster.components.archs import build_generator
from srcluster.components.weights import export_generator
from srcluster.errors import SrclusterError
from srcluster.evaluate import evaluate
from srcluster.page import ComparePage, Source, read_data
from srcluster.storage import StorageSettings
from srcluster.train.reporters import Reporter
from srcluster.train.validate import Validator

pytestmark = pytest.mark.usefixtures("single_thread")


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def decode(url: str, folder: Path | None = None) -> np.ndarray:
    if url.startswith("data:image/png;base64,"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        assert folder is not None
        data = (folder / url).read_bytes()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def reassemble(picture: dict, folder: Path | None = None) -> np.ndarray:
    return np.concatenate([np.concatenate([decode(u, folder) for u in row], axis=1) for row in picture["tiles"]])


def sample_page() -> tuple[ComparePage, dict[tuple[str, str], np.ndarray]]:
    """2 images (one larger than a tile) x bicubic, lr, 3 checkpoints of a stage, hr; one identical picture (inf)."""
    page = ComparePage("a <b>test</b> </script>", {"psnr": "higher", "lpips": "lower"}, note="x4")
    arrays = {}
    for i, (h, w) in enumerate([(600, 700), (64, 48)]):
        image = f"img{i}</script>"
        hr = noise(h, w, i)
        arrays[(image, "hr")] = hr
        page.add(image, Source("hr"), hr)
        arrays[(image, "lr")] = hr[::4, ::4]
        page.add(image, Source("lr"), hr[::4, ::4])
        arrays[(image, "bicubic")] = hr // 2
        page.add(image, Source("bicubic"), hr // 2, {"psnr": 20.0 + i, "lpips": 0.5})
        for step in (1000, 2000, 3000):
            name = f"stage@{step}"
            arrays[(image, name)] = noise(h, w, step + i)
            metrics = {"psnr": math.inf if step == 3000 and i == 1 else 25.0 + step / 1000 + i, "lpips": 0.1 * i}
            page.add(image, Source(name, group="stage", step=step), arrays[(image, name)], metrics)
    return page, arrays


def test_embedded_page_has_every_source_image_and_exact_pixels(tmp_path):
    page, arrays = sample_page()
    path = page.write(tmp_path / "page.html")
    html = path.read_text()
    assert not (tmp_path / "page_files").exists()
    assert html.count("</script>") == 2  # the data script and the viewer: no value closes a script early
    assert "<title>a &lt;b&gt;test&lt;/b&gt; &lt;/script&gt;</title>" in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    data = read_data(html)
    assert [s["name"] for s in data["sources"]] == ["hr", "lr", "bicubic", "stage@1000", "stage@2000", "stage@3000"]
    assert [(s["group"], s["step"]) for s in data["sources"][3:]] == [("stage", 1000), ("stage", 2000), ("stage", 3000)]
    assert [im["name"] for im in data["images"]] == ["img0</script>", "img1</script>"]
    assert [(im["height"], im["width"]) for im in data["images"]] == [(600, 700), (64, 48)]
    big = data["images"][0]["pictures"]["hr"]
    assert len(big["tiles"]) == 2 and len(big["tiles"][0]) == 2  # 600 x 700 in 512-pixel tiles
    for image in data["images"]:
        assert set(image["pictures"]) == {s["name"] for s in data["sources"]}
        for source, picture in image["pictures"].items():
            np.testing.assert_array_equal(reassemble(picture), arrays[(image["name"], source)])
    small = data["images"][0]["pictures"]["lr"]
    assert (small["height"], small["width"]) == (150, 175)  # the LR keeps its own size; the page stretches it


def test_metrics_and_means_are_the_values_given(tmp_path):
    page, _ = sample_page()
    data = read_data(page.write(tmp_path / "page.html").read_text())
    assert [m["name"] for m in data["metrics"]] == ["psnr", "lpips"]
    assert [m["better"] for m in data["metrics"]] == ["higher", "lower"]
    img0, img1 = data["images"]
    assert img0["pictures"]["stage@2000"]["metrics"] == {"psnr": 27.0, "lpips": 0.0}
    assert img1["pictures"]["stage@3000"]["metrics"]["psnr"] == "inf"  # identical pictures: BasicSR's +inf
    assert img0["pictures"]["hr"]["metrics"] == {}
    assert data["means"]["bicubic"] == {"psnr": pytest.approx(20.5), "lpips": pytest.approx(0.5)}
    assert data["means"]["stage@3000"]["psnr"] == pytest.approx(28.0)  # the finite values only
    assert "hr" not in data["means"]


def test_large_pages_put_their_tiles_beside_the_page(tmp_path, monkeypatch):
    page, arrays = sample_page()
    monkeypatch.setattr(page_module, "EMBED_LIMIT", 1000)
    path = page.write(tmp_path / "big.html")
    data = read_data(path.read_text())
    assert "data:image" not in path.read_text()
    url = data["images"][1]["pictures"]["bicubic"]["tiles"][0][0]
    assert url.startswith("big_files/") and not url.startswith("/")
    np.testing.assert_array_equal(
        reassemble(data["images"][1]["pictures"]["bicubic"], tmp_path), arrays[("img1</script>", "bicubic")]
    )
    embedded = read_data(page.write(tmp_path / "forced.html", embed=True).read_text())
    assert embedded["images"][1]["pictures"]["bicubic"]["tiles"][0][0].startswith("data:image/png;base64,")


def test_fit_thins_the_timeline_and_says_what_went(tmp_path):
    page = ComparePage("timeline", {"psnr": "higher"})
    for step in range(1, 10):
        page.add("a", Source(f"s@{step}", group="s", step=step), noise(32, 32, step), {"psnr": float(step)})
    page.add("a", Source("hr"), noise(32, 32, 0))
    one = page.pictures[("a", "hr")].nbytes
    page.fit(limit=one * 6)
    kept = [s.name for s in page.sources]
    assert page.nbytes <= one * 6
    assert kept[0] == "s@1" and "s@9" in kept and "hr" in kept
    assert set(page.left_out) == {f"s@{i}" for i in range(1, 10)} - set(kept)
    assert read_data(page.write(tmp_path / "p.html").read_text())["left_out"] == page.left_out


# --- srcluster compare ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    x4 = export_generator(build_generator("superultracompact", 4), folder / "x4.safetensors")
    x2 = export_generator(build_generator("superultracompact", 2), folder / "x2.safetensors")
    return {"x4": x4, "x2": x2}


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hr")
    for i, (h, w) in enumerate([(48, 40), (37, 53)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = (np.stack([np.sin(xx / 5), np.cos(yy / 7), np.sin((xx + yy) / 9)], -1) + 1) * 100
        pixels = np.clip(base + np.random.default_rng(i).normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
    return folder


def test_compare_cli_scores_like_evaluate(models, hr_dir, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    code = main(
        [
            *("compare", "bicubic", "lr", f"mine={models['x4']}", "hr", "--images", str(hr_dir)),
            *("--metrics", "psnr,ssim", "-o", str(out), "--device", "cpu"),
        ]
    )
    assert code == 0
    assert out.resolve().as_uri() in capsys.readouterr().out
    data = read_data(out.read_text())
    assert [s["name"] for s in data["sources"]] == ["bicubic", "lr", "mine", "hr"]
    assert [im["name"] for im in data["images"]] == ["im0", "im1"]
    for source, model in (("bicubic", None), ("mine", str(models["x4"]))):
        expected = evaluate(str(hr_dir), 4, model=model, metrics=("psnr", "ssim"), device="cpu")
        for row, image in zip(expected["images"], data["images"], strict=True):
            got = image["pictures"][source]["metrics"]
            assert got == {"psnr": pytest.approx(row["psnr"], abs=1e-9), "ssim": pytest.approx(row["ssim"], abs=1e-9)}
    # im1 is 37 x 53: mod-cropped to 36 x 52 as evaluate does; LR is a quarter of it
    im1 = data["images"][1]
    assert (im1["height"], im1["width"]) == (36, 52)
    assert (im1["pictures"]["lr"]["height"], im1["pictures"]["lr"]["width"]) == (9, 13)
    assert im1["pictures"]["hr"]["metrics"] == {} and im1["pictures"]["lr"]["metrics"] == {}


def test_a_smaller_scale_model_is_resized_and_says_so(models, hr_dir):
    columns = resolve(["bicubic", str(models["x2"]), "hr"])
    plan = plan_from_images(str(hr_dir), 4, ["psnr"], True, 0, 8)
    loaded = load_models(columns, torch.device("cpu"), StorageSettings.resolve())
    page = build_page(columns, plan, "t", loaded, torch.device("cpu"))
    x2 = page.source("x2")
    assert x2.note == "x2, then bicubic x2"
    assert page.pictures[("im0", "x2")].height == 48


def test_bad_sources_are_one_line_errors(models, hr_dir, tmp_path):
    with pytest.raises(SrclusterError, match="two sources are named 'bicubic'"):
        resolve(["bicubic", "bicubic"])
    with pytest.raises(SrclusterError, match="does not exist"):
        main_raises(["compare", str(tmp_path / "missing.safetensors"), "--images", str(hr_dir)])
    with pytest.raises(SrclusterError, match="only built-ins given"):
        main_raises(["compare", "bicubic", "hr", "--images", str(hr_dir)])
    with pytest.raises(SrclusterError, match="x4 model: it cannot be shown in a x2 comparison"):
        main_raises(["compare", str(models["x4"]), "--images", str(hr_dir), "--scale", "2", "--metrics", "psnr"])
    with pytest.raises(SrclusterError, match="runs:/RUN_ID or runs:/RUN_ID/STAGE"):
        resolve(["runs:/a/b/c"])
    assert [c.builtin for c in resolve(["base=bicubic", "lr"])] == ["bicubic", "lr"]
    assert [c.source.name for c in resolve(["base=bicubic", str(models["x4"])])] == ["base", "x4"]
    assert isinstance(resolve(["hr"])[0], Column)


def main_raises(argv: list[str]) -> None:
    """Run a CLI command through its handler, so the SrclusterError surfaces instead of being printed."""
    from srcluster.cli import parser

    args = parser().parse_args(argv)
    args.fn(args)


# --- during training: the stage's page grows by one checkpoint per validation ----------------------------------------


def test_validation_adds_each_checkpoint_to_the_stage_page(tmp_path):
    from srcluster.config import Metric
    from srcluster.train.validate import Validator, ValSet, build_metrics, prepare

    images = [(f"v{i}", torch.from_numpy(noise(24, 20, i)).permute(2, 0, 1).contiguous()) for i in range(2)]
    metrics = build_metrics({"psnr": Metric(type="calculate_psnr")}, 2)
    validator = Validator([ValSet("val", "val", prepare(images, 2))], metrics, 2)
    per_image = {}
    for iteration in (100, 200):
        torch.manual_seed(iteration)
        net = build_generator("superultracompact", 2)  # a different "checkpoint" each time
        scores = validator(net, tmp_path / f"val_{iteration}.png")
        per_image[iteration] = {image.name: s["psnr"] for image, _, s in validator.outputs["val"]}
        path = tmp_path / "validation.html"
        assert validator.write_page("fidelity", iteration, tmp_path) == path
        data = read_data(path.read_text())
        assert data["means"][f"fidelity@{iteration}"]["psnr"] == pytest.approx(scores["val_psnr"])
    assert [s["name"] for s in data["sources"]] == ["bicubic", "lr", "hr", "fidelity@100", "fidelity@200"]
    assert [(s["group"], s["step"]) for s in data["sources"][3:]] == [("fidelity", 100), ("fidelity", 200)]
    for image in data["images"]:
        for iteration in (100, 200):
            got = image["pictures"][f"fidelity@{iteration}"]["metrics"]["psnr"]
            assert got == pytest.approx(per_image[iteration][image["name"]])
    assert data["means"]["bicubic"]["psnr"] == pytest.approx(scores["val_bicubic_psnr"])
    assert "data:image/png;base64," in path.read_text()  # embedded: MLflow's viewer shows it as one file
    without = Validator([ValSet("val", "val", prepare(images, 2))], metrics, 2, save_img=False)
    without(net, tmp_path / "x.png")
    assert without.write_page("fidelity", 1, tmp_path / "none") is None


# --- a pipeline's page, and --val ------------------------------------------------------------------------------------


def val_job(hr_dir: Path, name: str, scale: int, **val) -> dict:
    from helpers.jobs import tiny_job

    job = tiny_job(name=name, scale=scale)
    job["datasets"]["val"] = {"dataroot_gt": str(hr_dir)}
    metrics = {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}}
    job["val"] = {"val_freq": 10, "metrics_enabled": True, "metrics": metrics, **val}
    return job


def test_pipeline_page_shows_every_stage_with_bicubic_and_hr(models, hr_dir):
    from srcluster.config import parse_job
    from srcluster.recipes.pipeline import latest_page
    from srcluster.recipes.report import write_page
    from srcluster.tracking.models import ModelRef

    logged = []

    class Tracker:
        def log_artifact(self, run_id, path, folder):
            logged.append((run_id, Path(path), folder))

    results = [
        (stage, parse_job(val_job(hr_dir, stage, scale)), None, ModelRef(f"demo-{stage}", "3", str(models[key]), "r"))
        for stage, scale, key in (("fidelity_2x", 2, "x2"), ("fidelity_4x", 4, "x4"), ("gan_4x", 4, "x4"))
    ]
    path = write_page(Tracker(), "demo", "0123456789abcdef", results, StorageSettings.resolve())
    assert path is not None and logged == [("0123456789abcdef", path, "compare")]
    assert latest_page("demo") == path
    data = read_data(path.read_text())
    assert [s["name"] for s in data["sources"]] == ["lr", "bicubic", "fidelity_2x", "fidelity_4x", "gan_4x", "hr"]
    notes = {s["name"]: s["note"] for s in data["sources"]}
    assert notes["fidelity_2x"] == "demo-fidelity_2x v3; x2, then bicubic x2"
    assert notes["gan_4x"] == "demo-gan_4x v3"
    assert [m["name"] for m in data["metrics"]] == ["psnr", "ssim"]  # the last stage's val.metrics
    assert [im["name"] for im in data["images"]] == ["im0", "im1"]
    for image in data["images"]:
        assert set(image["pictures"]["gan_4x"]["metrics"]) == {"psnr", "ssim"}
        assert image["pictures"]["fidelity_4x"]["metrics"] == image["pictures"]["gan_4x"]["metrics"]  # same model
        assert (image["pictures"]["fidelity_2x"]["height"], image["pictures"]["fidelity_2x"]["width"]) == (
            image["height"],
            image["width"],
        )


def test_compare_on_a_jobs_validation_set_uses_its_metrics(models, hr_dir, tmp_path):
    import yaml

    job = tmp_path / "job.yml"
    metrics = {"psnr": {"type": "calculate_psnr", "test_y_channel": True}}
    job.write_text(yaml.safe_dump(val_job(hr_dir, "stage", 4, metrics=metrics)))
    out = tmp_path / "val.html"
    assert main(["compare", "bicubic", str(models["x4"]), "--val", str(job), "-o", str(out), "--device", "cpu"]) == 0
    data = read_data(out.read_text())
    assert [m["name"] for m in data["metrics"]] == ["psnr"]
    expected = evaluate(str(hr_dir), 4, model=str(models["x4"]), metrics=("psnr",), device="cpu")
    got = [im["pictures"]["x4"]["metrics"]["psnr"] for im in data["images"]]
    assert got == pytest.approx([row["psnr"] for row in expected["images"]], abs=1e-9)
    # a job that scores nothing (traiNNer-redux's default): the page still shows PSNR/SSIM as evaluate computes them
    job.write_text(yaml.safe_dump(val_job(hr_dir, "stage", 4, metrics_enabled=False)))
    assert main(["compare", "bicubic", "--val", str(job), "-o", str(out), "--device", "cpu"]) == 0
    assert [m["name"] for m in read_data(out.read_text())["metrics"]] == ["psnr", "ssim"]


def test_search_page_shows_the_top_trials_best_first(models, hr_dir, tmp_path):
    from types import SimpleNamespace

    from srcluster.config import parse_job
    from srcluster.tune.report import TOP_TRIALS, write_trials_page
    from srcluster.tune.run import TrialRow
    from srcluster.tune.space import LoadedSearch

    def row(trial: str, last: float | None, generator: str | None) -> TrialRow:
        return TrialRow(trial, "TERMINATED", {"lr": 1e-4}, last, last, 10, [], "run", generator)

    rows = [row(f"t{i}", 20.0 + i, str(models["x4"])) for i in range(TOP_TRIALS + 1)]
    rows += [row("failed", None, str(models["x4"])), row("no-generator", 99.0, None)]
    outcome = SimpleNamespace(name="search", metric="val_psnr", mode="max", rows=rows)
    search = cast(LoadedSearch, SimpleNamespace(base_job=parse_job(val_job(hr_dir, "base", 4))))  # all it reads
    path = write_trials_page(outcome, search, tmp_path / "top.html", StorageSettings.resolve())
    assert path is not None
    data = read_data(path.read_text())
    best_first = [f"trial t{i}" for i in range(TOP_TRIALS, 0, -1)]
    assert [s["name"] for s in data["sources"]] == ["bicubic", *best_first, "hr"]
    assert data["sources"][1]["note"] == f"val_psnr {20.0 + TOP_TRIALS:.4g}; lr=0.0001"


# --- a resumed stage goes on growing the page its MLflow run already has -------------------------------------------


def assert_same_page(got: ComparePage, want: ComparePage) -> None:
    assert (got.title, got.note, got.metrics, got.left_out) == (want.title, want.note, want.metrics, want.left_out)
    assert got.sources == want.sources and got.images == want.images
    assert got.pictures.keys() == want.pictures.keys()
    for key, picture in want.pictures.items():
        back = got.pictures[key]
        assert (back.width, back.height, back.tiles) == (picture.width, picture.height, picture.tiles)
        assert back.metrics == picture.metrics  # +inf included


@pytest.mark.parametrize("embed", [True, False])
def test_a_written_page_reads_back_as_the_same_page(tmp_path, embed):
    page, arrays = sample_page()
    page.left_out = ["stage@500"]
    path = page.write(tmp_path / "page.html", embed=embed)
    back = ComparePage.read(path)
    assert_same_page(back, page)
    assert back.means() == page.means()
    assert math.isinf(back.pictures[("img1</script>", "stage@3000")].metrics["psnr"])
    # written again (embedded), it shows the same pixels
    again = read_data(back.write(tmp_path / "again.html", embed=True).read_text())
    for image in again["images"]:
        for source, picture in image["pictures"].items():
            np.testing.assert_array_equal(reassemble(picture), arrays[(image["name"], source)])
    if embed:
        assert (tmp_path / "again.html").read_text() == path.read_text()


def test_a_page_never_reads_tiles_from_outside_its_folder(tmp_path):
    page, _ = sample_page()
    data = page.data(lambda i, s, r, c: f"../secret/{i}_{s}_{r}_{c}.png")
    with pytest.raises(ValueError, match="outside the page's folder"):
        ComparePage.from_data(data, tmp_path / "pages")


def stage_validator(images) -> Validator:
    from srcluster.config import Metric
    from srcluster.train.validate import ValSet, build_metrics, prepare

    return Validator(
        [ValSet("val", "val", prepare(images, 2))], build_metrics({"psnr": Metric(type="calculate_psnr")}, 2), 2
    )


def test_a_resumed_validator_continues_the_timeline_and_redoes_later_checkpoints(tmp_path):
    images = [(f"v{i}", torch.from_numpy(noise(24, 20, i)).permute(2, 0, 1).contiguous()) for i in range(2)]

    def validate_at(validator: Validator, iteration: int, seed: int) -> Path:
        torch.manual_seed(seed)
        validator(build_generator("superultracompact", 2))  # a different "checkpoint" each seed
        path = validator.write_page("fidelity", iteration, tmp_path / str(seed))
        assert path is not None
        return path

    first = stage_validator(images)
    for iteration in (100, 200, 300):
        logged = validate_at(first, iteration, iteration)
    assert first.page is not None
    first.page.left_out = ["fidelity@50", "fidelity@250"]  # as `fit` thins long timelines
    logged = first.page.write(logged)
    before = ComparePage.read(logged)

    restarted = stage_validator(images)  # a new worker, resumed from the checkpoint at iteration 200
    dropped = restarted.continue_page(ComparePage.read(logged), "fidelity", resumed_at=200)
    assert dropped == ["fidelity@300"]
    validate_at(restarted, 300, 7)
    redone = {image.name: scores for image, _, scores in restarted.outputs["val"]}
    page = ComparePage.read(validate_at(restarted, 400, 8))
    assert [s.name for s in page.sources] == ["bicubic", "lr", "hr", *(f"fidelity@{i}" for i in (100, 200, 300, 400))]
    assert page.left_out == ["fidelity@50"]  # 250 is redone (and may be left out again by `fit`)
    for key, picture in before.pictures.items():
        if key[1] != "fidelity@300":  # everything up to the resume, and bicubic/LR/HR, exactly as before
            assert (page.pictures[key].tiles, page.pictures[key].metrics) == (picture.tiles, picture.metrics)
    for name, scores in redone.items():  # checkpoint 300 is the resumed run's, not the one it replaced
        assert page.pictures[(name, "fidelity@300")].metrics == scores
    assert all(
        page.pictures[(n, "fidelity@300")].tiles != before.pictures[(n, "fidelity@300")].tiles for n in ("v0", "v1")
    )


class PageRecorder(Reporter):
    """A stage's run as the loop sees it: artifacts kept by path (so a restart can read them back), lines said."""

    def __init__(self, store: dict[str, bytes], fail: Exception | None = None):
        super().__init__(tracker=None, run_id="r", stage="fidelity")
        self.store, self.fail, self.said = store, fail, []

    def report(self, stage, metrics, *, save, validated):
        pass

    def log(self, metrics, step):
        pass

    def say(self, message):
        self.said.append(message)

    def log_artifact(self, path, folder):
        self.store[f"{folder}/{path.name}"] = path.read_bytes()

    def download_artifact(self, path, dest):
        if self.fail is not None:
            raise self.fail
        if path not in self.store:
            return None
        (dest / "page.html").write_bytes(self.store[path])
        return dest / "page.html"


def train_stage(tmp_path: Path, reporter: Reporter, *, total: int, start: int = 0):
    from helpers.images import PHOTO, save
    from srcluster.config import parse_job
    from srcluster.train.loop import run
    from srcluster.train.state import build_stage
    from srcluster.train.validate import build_validator

    save(tmp_path / "val" / "a.png", PHOTO[:40, :48])
    job = parse_job(
        {
            "name": "fidelity",
            "scale": 2,
            "datasets": {
                "train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2},
                "val": {"dataroot_gt": str(tmp_path / "val")},
            },
            "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
            "train": {"total_iter": total, "losses": [{"type": "charbonnierloss"}]},
            "val": {"val_freq": 3, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
            "logger": {"print_freq": 3, "save_checkpoint_freq": 3},
            "srcluster": {"workers": 1},
        }
    )
    stage = build_stage(job, torch.device("cpu"), log=lambda _: None)
    stage.iteration = start  # as restored from the run's checkpoint at `start`
    run(stage, HRBatches(total - start), build_validator(job), reporter)


def logged_page(store: dict[str, bytes]) -> ComparePage:
    return ComparePage.from_data(read_data(store["compare/validation.html"].decode()))


def test_a_resumed_stage_logs_a_page_with_checkpoints_from_before_and_after_the_restart(tmp_path):
    store: dict[str, bytes] = {}
    train_stage(tmp_path, PageRecorder(store), total=6)
    before = logged_page(store)
    assert [s.name for s in before.sources][3:] == ["fidelity@3", "fidelity@6"]
    restarted = PageRecorder(store)
    train_stage(tmp_path, restarted, total=9, start=4)  # resumed at 4 (a rerun with a raised total_iter)
    after = logged_page(store)
    assert [s.name for s in after.sources][3:] == ["fidelity@3", "fidelity@6", "fidelity@9"]
    assert after.pictures[("a", "fidelity@3")].tiles == before.pictures[("a", "fidelity@3")].tiles
    assert after.pictures[("a", "fidelity@6")].tiles != before.pictures[("a", "fidelity@6")].tiles  # redone
    assert restarted.said == []


def test_without_the_earlier_page_a_resumed_stage_starts_anew_and_says_so_once(tmp_path):
    store: dict[str, bytes] = {}
    train_stage(tmp_path, PageRecorder(store), total=3)
    down = PageRecorder(store, fail=SrclusterError("cannot reach the MLflow tracking server at http://127.0.0.1:1"))
    train_stage(tmp_path, down, total=9, start=3)
    assert [s.name for s in logged_page(store).sources][3:] == ["fidelity@6", "fidelity@9"]
    assert len(down.said) == 1
    assert "starts anew at iteration 3" in down.said[0] and "cannot reach the MLflow tracking server" in down.said[0]
    fresh = PageRecorder({})  # a new run resumed from another run's checkpoint: no page yet, nothing to say
    train_stage(tmp_path, fresh, total=6, start=3)
    assert [s.name for s in logged_page(fresh.store).sources][3:] == ["fidelity@6"] and fresh.said == []


def test_the_stage_page_comes_back_from_the_runs_artifacts(tmp_path):
    from helpers.free_ports import free_port_block
    from srcluster.tracking.tracker import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", buffered=True)
    run_id = tracker.start_run("page-resume", "fidelity")
    reporter = Reporter(tracker, run_id)
    assert reporter.download_artifact("compare/validation.html", tmp_path / "none") is None
    page, _ = sample_page()
    reporter.log_artifact(page.write(tmp_path / "logged" / "validation.html"), "compare")
    path = reporter.download_artifact("compare/validation.html", tmp_path / "back")
    assert path is not None
    assert_same_page(ComparePage.read(path), page)
    dead = Tracker(f"http://127.0.0.1:{free_port_block(1)}", buffered=True)
    with pytest.raises(SrclusterError, match="cannot reach the MLflow tracking server"):
        Reporter(dead, run_id).download_artifact("compare/validation.html", tmp_path / "dead")
