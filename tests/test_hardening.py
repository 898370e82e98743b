"""The server under hostile requests, concurrency, a killed training run and the network
(issue 11), through a real ``monailabel start_server`` on a loopback port.

The studies are the sample study committed in the repo (an HC18 ultrasound image and the
abdominal CT, with their reference masks), so these tests need no ``../shared/data``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lib.app_server import start_app_server
from lib.processes import free_port, stop_group
from tests.conftest import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "apps" / "midepseg" / "sample_study"
REFERENCES = REPO_ROOT / "apps" / "midepseg" / "sample_references"
IMAGE_2D, IMAGE_3D = "797_HC", "abdomen_ct"
BUDGET_S = 20.0  # --conf request_budget_s of the servers here
ANSWER_LIMIT_S = BUDGET_S + 10.0  # the budget, one more step and the transfer
FUZZ_EXAMPLES = 1000
MAX_EACH = {2: 20, 3: 8}  # refinement clicks of each kind at the limit (lib.edge.params: 40 and 16 in all)

requests = pytest.importorskip("requests")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


# ---------------------------------------------------------------------------- servers


@dataclass
class Hardened:
    url: str
    studies: Path
    model_dir: Path
    log: Path
    proc: object

    def labels(self) -> dict[str, str]:
        """sha256 of every stored label file and of the index's label entries."""
        out = {}
        root = self.studies / "labels"
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        index = json.loads((self.studies / "datastore_v2.json").read_text())
        entries = {k: sorted((t, m.get("ext")) for t, m in v.get("labels", {}).items()) for k, v in index["objects"].items()}
        out["index"] = json.dumps(entries, sort_keys=True)
        return out


def _studies(root: Path) -> Path:
    studies = root / "studies"
    studies.mkdir(parents=True)
    for name in (f"{IMAGE_2D}.png", f"{IMAGE_3D}.nii.gz"):
        shutil.copy(SAMPLE / name, studies / name)
    return studies


def _start(root: Path, host: str = "127.0.0.1", env: dict | None = None, conf: dict | None = None) -> Hardened:
    studies = _studies(root)
    model_dir, log = root / "model", root / "server.log"
    port = free_port()
    conf = {"model_dir": str(model_dir), "request_budget_s": str(BUDGET_S), **(conf or {})}
    proc, seconds = start_app_server(studies, port, log, conf=conf, env=env, host=host)
    print(f"\nserver up in {seconds:.1f} s on {host}:{port} (log {log})")
    return Hardened(f"http://127.0.0.1:{port}", studies, model_dir, log, proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = _start(tmp_path_factory.mktemp("hardened"))
    try:
        yield srv
    finally:
        stop_group(srv.proc)


# ---------------------------------------------------------------------------- cases


def _load(path: Path) -> np.ndarray:
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(str(path)))


@pytest.fixture(scope="module")
def cases():
    """Per model: the image id, its spatial shape, a few sets of margin points on the
    reference object, and the reference mask."""
    from lib.transforms.margin_points import extreme_margin_points

    head = _load(REFERENCES / f"{IMAGE_2D}.png") > 0
    spleen = _load(REFERENCES / f"{IMAGE_3D}.nii.gz") > 0
    out = {}
    for model, image, ref in (("midepseg_2d", IMAGE_2D, head), ("midepseg_3d", IMAGE_3D, spleen)):
        base = extreme_margin_points(ref)
        top = np.asarray(ref.shape) - 1
        margins = [base.tolist()] + [np.clip(base + offset, 0, top).tolist() for offset in (-1, 1)]
        out[model] = {"image": image, "shape": ref.shape, "margins": margins, "reference": ref}
    return out


def _mask_file(mask: np.ndarray, suffix: str, affine=None) -> bytes:
    """A mask as file bytes (PNG for 2D, NIfTI otherwise) in LoadImage's axis order."""
    import tempfile

    import nibabel as nib
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mask{suffix}"
        if suffix == ".png":
            Image.fromarray(np.ascontiguousarray(mask.T).astype(np.uint8)).save(path)
        else:
            nib.save(nib.Nifti1Image(mask, np.eye(4) if affine is None else affine), str(path))
        return path.read_bytes()


@pytest.fixture(scope="module")
def uploads(cases):
    """Uploads for ``label``: (file name, bytes) by what they are."""
    head, spleen = cases["midepseg_2d"]["reference"], cases["midepseg_3d"]["reference"]
    return {
        "garbage": ("label.nii.gz", b"this is not an image"),
        "empty file": ("label.nrrd", b""),
        "png 10x10": ("label.png", _mask_file(np.ones((10, 10), np.uint8), ".png")),
        "head, values 0-3": ("label.png", _mask_file((head * 3).astype(np.uint8), ".png")),
        "spleen as float 0.5": ("label.nii.gz", _mask_file(spleen.astype(np.float32) * 0.5, ".nii.gz")),
        "spleen negative": ("label.nii.gz", _mask_file(-spleen.astype(np.int16), ".nii.gz")),
        "spleen, wrong shape": ("label.nii.gz", _mask_file(spleen[:-3].astype(np.uint8), ".nii.gz")),
        "bad name": ("label.exe", _mask_file(head.astype(np.uint8), ".png")),
        "head mask": ("label.png", _mask_file(head.astype(np.uint8), ".png")),
        "spleen mask": ("label.nii.gz", _mask_file(spleen.astype(np.uint8), ".nii.gz")),
    }


# A valid stored label for one of the images (as an infer start mask only the two binary
# masks are); every other upload fits no image, so a PUT /datastore/label with it must never
# store anything.
GOOD_UPLOADS = ("head mask", "spleen mask", "head, values 0-3")


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: tuple = ()
    params: str | None = None
    files: tuple = ()  # (field, name, bytes)

    def send(self, url: str, timeout: float = ANSWER_LIMIT_S + 30) -> tuple[int, float, str]:
        files = {"params": (None, self.params)} if self.params is not None else {}
        files.update({field: (name, content) for field, name, content in self.files})
        start = time.perf_counter()
        r = requests.request(self.method, url + self.path, params=dict(self.query), files=files or None, timeout=timeout)
        return r.status_code, time.perf_counter() - start, r.text[:300]


LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
JSON = st.recursive(LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=10)
DOCUMENTED = ("foreground", "background", "margin_points", "lamda", "sigma", "slice_axis", "result_extension",
              "result_dtype", "result_compress", "device")
INTERNAL = ("slice", "spacing", "timing", "save_label", "label_tag", "label", "image", "model", "session",
            "deadline", "margin_count", "start_label", "start_mask", "pred", "client_id", "image_cache_key")
POINT_KEYS = ("foreground", "background")
KEY = st.sampled_from(DOCUMENTED + INTERNAL) | st.text(min_size=1, max_size=10)
BAD_IDS = ("", "nope", "../797_HC", "/etc/passwd", "797_HC.png", "..", "%2e%2e%2f", "1.2.3", "a" * 300)
OPTION_VALUES = {
    "lamda": st.floats(-1, 60) | JSON,
    "sigma": st.sampled_from([1e-300, 1e-4, 1e-3, 0.05, 10.0, 11.0, 0.0, -1.0]) | st.floats(1e-3, 10),
    "margin_points": st.integers(-1, 20) | JSON,
    "slice_axis": st.integers(-1, 3) | JSON,
    "result_extension": st.sampled_from([".nrrd", ".nii.gz", ".nii", ".exe", "", "../x"]),
    "result_dtype": st.sampled_from(["uint8", "int16", "float32", "complex128", "object"]),
    "result_compress": JSON,
    "device": st.sampled_from(["cpu", "cuda", "cuda:7", "tpu", ""]),
}


def _infer(model: str, image: str, params: dict | str, label: tuple | None = None, file: bool = False) -> Call:
    files = (("label", *label),) if label else ()
    if file:
        files += (("file", "image.nii.gz", b"not a volume"),)
    text = params if isinstance(params, str) else json.dumps(params)
    return Call("POST", f"/infer/{model}", (("image", image),), text, files)


def rarely(draw, n: int) -> bool:
    """True about once in ``n`` draws (hypothesis favours the first choice, so the common
    case comes first; ``integers(0, n) == 0`` would fire far more often than 1 in n)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


@st.composite
def plausible_infer(draw, cases, uploads) -> Call:
    """A request a client could send, with some of its parts wrong: points that may lie
    outside the image, options in and out of range, odd image ids, uploads."""
    model = draw(st.sampled_from(sorted(cases)))
    case = cases[model]
    shape = case["shape"]
    dim = len(shape)
    on_slice = model == "midepseg_2d" and rarely(draw, 5)  # the 2D model on the CT
    if on_slice:
        case, shape = cases["midepseg_3d"], cases["midepseg_3d"]["shape"]
    margin = draw(st.sampled_from(case["margins"]))
    if on_slice:  # points of one slice of the CT
        k = shape[2] // 2
        margin = [p[:2] + [k] for p in margin[:4]]

    def point() -> list[int]:
        p = [draw(st.integers(0, n - 1)) for n in shape]
        if on_slice:
            p[2] = margin[0][2] if not rarely(draw, 10) else draw(st.integers(0, shape[2] - 1))
        return p

    counts = st.sampled_from([0, 0, 1, 2, 3, MAX_EACH[dim], MAX_EACH[dim] + 1])
    foreground = list(margin[: draw(st.integers(0, len(margin)))] if rarely(draw, 6) else margin)
    foreground += [point() for _ in range(draw(counts))]
    params: dict = {"foreground": foreground, "background": [point() for _ in range(draw(counts))]}
    if rarely(draw, 10):  # one point just outside the image
        axis = draw(st.integers(0, len(shape) - 1))
        outside = point()
        outside[axis] = draw(st.sampled_from([-1, shape[axis], shape[axis] + 5, -(10**9)]))
        params[draw(st.sampled_from(POINT_KEYS))].append(outside)
    for key in draw(st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=2, unique=True)):
        params[key] = draw(OPTION_VALUES[key])
    if rarely(draw, 7):
        params[draw(KEY)] = draw(JSON)
    image = case["image"] if not rarely(draw, 8) else draw(st.sampled_from(BAD_IDS))
    label = uploads[draw(st.sampled_from(sorted(uploads)))] if rarely(draw, 6) else None
    return _infer(model, image, params, label, file=rarely(draw, 30))


@st.composite
def malformed_infer(draw) -> Call:
    """Params that are not what the endpoint expects at all."""
    model = draw(st.sampled_from(["midepseg_2d", "midepseg_3d", "nope", "..", "midepseg_2d/../x"]))
    image = draw(st.sampled_from((IMAGE_2D, IMAGE_3D) + BAD_IDS))
    params = draw(st.one_of(
        st.sampled_from(["[]", "5", "{bad", "", "null", '"text"', '{"foreground": NaN}', "{" * 50]),
        st.text(max_size=40),
        JSON.map(json.dumps),
        st.dictionaries(KEY, JSON, max_size=5).map(json.dumps),
    ))
    return _infer(model, image, params)


@st.composite
def bad_label_put(draw, uploads) -> Call:
    """``PUT /datastore/label`` with an upload that no image accepts, or a bad tag or id."""
    image = draw(st.sampled_from((IMAGE_2D, IMAGE_3D) + BAD_IDS))
    tag = draw(st.sampled_from(["final", "original", "../../evil", "", "a/b", "x" * 70, ".hidden"]) | st.text(max_size=8))
    name, content = uploads[draw(st.sampled_from(sorted(set(uploads) - set(GOOD_UPLOADS))))]
    params = draw(st.sampled_from(["{}", "[]", "{bad", '{"label_info": 5}']))
    return Call("PUT", "/datastore/label", (("image", image), ("tag", tag)), params, (("label", name, content),))


@st.composite
def read_only_call(draw) -> Call:
    """Reads with junk arguments (nothing that deletes or trains)."""
    junk = draw(st.sampled_from(BAD_IDS) | st.text(max_size=12))
    return draw(st.sampled_from([
        Call("GET", "/info/"),
        Call("GET", "/datastore/", (("output", draw(st.sampled_from(["all", "json", "junk"]))),)),
        Call("GET", "/datastore/image", (("image", junk),)),
        Call("GET", "/datastore/label", (("label", junk), ("tag", junk))),
        Call("GET", "/datastore/image/info", (("image", junk),)),
        Call("POST", f"/activelearning/{junk or 'x'}", (), "{}"),
        Call("POST", "/activelearning/random", (), draw(st.sampled_from(["{}", "[]", "{bad"]))),
    ]))


def _save_final_label(server: Hardened, image: str, upload: tuple) -> None:
    name, content = upload
    r = requests.put(f"{server.url}/datastore/label", params={"image": image, "tag": "final"},
                     files={"label": (name, content), "params": (None, "{}")}, timeout=60)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------- tests


def test_fuzzed_requests_never_fail_the_server_or_touch_labels(server, cases, uploads):
    """1,000 generated requests (hypothesis, derandomized): malformed and plausible infer
    requests, label uploads no image accepts, reads with junk ids. No answer is a 5xx, each
    comes within the budget, the server stays up, the stored labels stay byte-identical."""
    _save_final_label(server, IMAGE_2D, uploads["head mask"])
    _save_final_label(server, IMAGE_3D, uploads["spleen mask"])
    before = server.labels()
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    seconds: list[float] = []
    calls = st.one_of(
        plausible_infer(cases, uploads), plausible_infer(cases, uploads), plausible_infer(cases, uploads),
        malformed_infer(), bad_label_put(uploads), read_only_call(),
    )

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(call=calls)
    def one(call: Call) -> None:
        status, elapsed, text = call.send(server.url)
        statuses[status] += 1
        seconds.append(elapsed)
        if 400 <= status < 500:
            reasons[text[:60]] += 1
        assert status < 500, f"{call.method} {call.path} {call.query} {call.params!r:.300}: HTTP {status} {text}"
        assert elapsed < ANSWER_LIMIT_S, f"{call.method} {call.path} took {elapsed:.1f} s"
        if len(seconds) % 100 == 0:
            assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200

    one()
    print(f"\nfuzz: {len(seconds)} requests, statuses {dict(sorted(statuses.items()))}, "
          f"p50 {np.percentile(seconds, 50):.3f} s, p99 {np.percentile(seconds, 99):.3f} s, max {max(seconds):.2f} s")
    print("most frequent refusals:", *(f"  {n} x {r}" for r, n in reasons.most_common(8)), sep="\n")
    assert len(seconds) >= FUZZ_EXAMPLES
    assert statuses[200] >= 100, "too few valid requests: the generator no longer reaches the pipeline"
    assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200
    assert server.labels() == before, "a rejected request changed a stored label"


def _mixed_requests(cases, n: int) -> list[Call]:
    """``n`` valid requests, alternately 2D and 3D: margin points no other test uses (so
    nothing is cached for them yet) plus 0-3 clicks of each kind inside and outside the
    reference object."""
    rng = random.Random(7)
    calls = []
    for i in range(n):
        model = ("midepseg_2d", "midepseg_3d")[i % 2]
        case = cases[model]
        ref = case["reference"]
        margin = np.clip(np.asarray(case["margins"][0]) + (2, -2)[(i // 2) % 2], 0, np.asarray(ref.shape) - 1)
        inside, outside = np.argwhere(ref), np.argwhere(~ref)
        fg = [inside[rng.randrange(len(inside))].tolist() for _ in range(rng.randrange(4))]
        bg = [outside[rng.randrange(len(outside))].tolist() for _ in range(rng.randrange(4))]
        params = {"foreground": margin.tolist() + fg, "background": bg, "result_extension": ".nii.gz"}
        calls.append(_infer(model, case["image"], params))
    return calls


def _answer(url: str, call: Call) -> tuple[str, float]:
    """sha256 of the answer's mask voxels (``output=image``: the mask file alone), seconds."""
    start = time.perf_counter()
    r = requests.post(url + call.path, params={**dict(call.query), "output": "image"},
                      files={"params": (None, call.params)}, timeout=ANSWER_LIMIT_S + 30)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text[:300]
    import gzip

    return hashlib.sha256(gzip.decompress(r.content)).hexdigest(), elapsed


def test_the_model_folder_gets_the_3d_stage1_ensemble_member(server):
    """``--conf model_dir``: the shipped weights are copied there, the 3D task's stage-1
    ensemble member with them (without it the 3D model would answer alone, with a warning)."""
    assert (server.model_dir / "midepseg_3d_generic.pt").is_file()
    assert "no stage-1 ensemble member" not in server.log.read_text()


def test_four_concurrent_clients_get_the_answers_of_one_at_a_time(server, cases, tmp_path):
    """4 clients x 50 mixed 2D/3D requests at once, on nothing cached: every answer equals
    the same request answered alone by a fresh server, no errors; p50/p99 printed."""
    calls = _mixed_requests(cases, 50)
    results: dict[int, list] = {}
    errors: list[str] = []

    def client(k: int) -> None:
        order = list(range(len(calls)))
        random.Random(k).shuffle(order)
        got = []
        for i in order:
            try:
                got.append((i, *_answer(server.url, calls[i])))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(f"client {k}, request {i}: {e}")
        results[k] = got

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    fresh = _start(tmp_path)
    try:
        alone = [_answer(fresh.url, c)[0] for c in calls]
    finally:
        stop_group(fresh.proc)
    latencies = [s for got in results.values() for _, _, s in got]
    mismatches = [(k, i) for k, got in results.items() for i, digest, _ in got if digest != alone[i]]
    print(f"\n4 clients x 50 requests: {len(latencies)} answers in {wall:.1f} s, p50 {np.percentile(latencies, 50):.3f} s, "
          f"p99 {np.percentile(latencies, 99):.3f} s, {len(errors)} errors, {len(mismatches)} mismatches")
    assert not errors, errors[:5]
    assert len(latencies) == 200
    assert not mismatches, f"answers differ from the requests answered alone: {mismatches[:10]}"


def test_info_answers_while_a_3d_click_is_computed(server, cases):
    """``/info/`` within 0.5 s while a 3D request runs (a stage 1 and 81 refinement states
    not cached yet: seconds of work, for which ``/info/`` used to wait)."""
    case = cases["midepseg_3d"]
    margin = np.clip(np.asarray(case["margins"][0]) + (0, 1, 0), 0, np.asarray(case["shape"]) - 1)
    rng = np.random.default_rng(3)
    inside, outside = np.argwhere(case["reference"]), np.argwhere(~case["reference"])
    clicks = {"foreground": margin.tolist() + inside[rng.choice(len(inside), MAX_EACH[3], replace=False)].tolist(),
              "background": outside[rng.choice(len(outside), MAX_EACH[3], replace=False)].tolist()}
    call = _infer("midepseg_3d", IMAGE_3D, clicks)
    done = threading.Event()
    answer: list = []

    def run() -> None:
        answer.append(call.send(server.url))
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    info = []
    while not done.is_set():
        start = time.perf_counter()
        assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200
        info.append(time.perf_counter() - start)
        time.sleep(0.02)
    worker.join()
    print(f"\n/info/ during a 3D request of {answer[0][1]:.2f} s: {len(info)} answers, max {max(info):.3f} s")
    assert answer[0][0] == 200, answer
    assert len(info) >= 3, "the 3D request ended before /info/ could be asked during it"
    assert max(info) < 0.5


def test_cross_origin_and_foreign_host_requests_are_refused(server, cases):
    """A browser page of another origin cannot make the server work (its form POST is refused
    before it runs, and no CORS header answers it), nor can a DNS-rebinding page; the
    server's own origin (OHIF is served from it) works."""
    call = _infer("midepseg_2d", IMAGE_2D, {"foreground": cases["midepseg_2d"]["margins"][0]})
    before = server.labels()
    port = server.url.rsplit(":", 1)[1]
    for headers, status in (
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": f"http://127.0.0.1:{int(port) + 1}"}, 403),
        ({"Host": f"evil.example:{port}"}, 403),
        ({"Origin": f"http://127.0.0.1:{port}"}, 200),
    ):
        r = requests.post(server.url + call.path, params=dict(call.query), files={"params": (None, call.params)},
                          headers=headers, timeout=60)
        assert r.status_code == status, (headers, r.status_code, r.text[:200])
        if status == 403:
            assert "access-control-allow-origin" not in {k.lower() for k in r.headers}, r.headers
    preflight = requests.options(server.url + call.path, timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403
    assert server.labels() == before


def _local_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_listening_beyond_loopback_needs_authentication(tmp_path):
    """``--host 0.0.0.0`` without authentication: the server refuses to start, naming why.
    With a token: it starts, and a client reaching it through the machine's network address
    needs the token (loopback clients do not)."""
    with pytest.raises(RuntimeError):
        _start(tmp_path / "open", host="0.0.0.0")
    log = (tmp_path / "open" / "server.log").read_text()
    assert "refusing to listen on '0.0.0.0'" in log

    (tmp_path / "token").mkdir()
    token = "s3cret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:24]
    srv = _start(tmp_path / "token", host="0.0.0.0", env={"MIDEPSEG_AUTH_TOKEN": token})
    try:
        assert requests.get(f"{srv.url}/info/", timeout=10).status_code == 200
        address = _local_address()
        if address is None:
            pytest.skip("no non-loopback address on this machine to reach the server through")
        remote = srv.url.replace("127.0.0.1", address)
        assert requests.get(f"{remote}/info/", timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * len(token)}
        assert requests.get(f"{remote}/info/", headers=wrong, timeout=10).status_code == 401
        right = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{remote}/info/", headers=right, timeout=10).status_code == 200
    finally:
        stop_group(srv.proc)


def test_kill_9_during_training_leaves_the_published_weights_loadable(tmp_path, uploads):
    """``kill -9`` of the whole server (training subprocess included) at the moment the
    trainer publishes new weights (its temporary file seen): the published file is still a
    complete checkpoint, and the infer task loads it."""
    import torch

    from configs.midepseg import MIDeepSeg2DConfig
    from lib.networks import midepseg_unet

    srv = _start(tmp_path)
    killed_at = None
    try:
        _save_final_label(srv, IMAGE_2D, uploads["head mask"])
        model = srv.model_dir / "midepseg_2d.pt"
        first = model.stat().st_mtime_ns
        request = {"max_epochs": 40, "val_split": 0.0, "train_batch_size": 1, "dataset": "Dataset", "pretrained": True}
        from monailabel.client import MONAILabelClient

        started = MONAILabelClient(srv.url, tmpdir=str(tmp_path)).train_start("midepseg_2d", request)
        assert started["status"] in ("SUBMITTED", "RUNNING", "QUEUED"), started
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if list(srv.model_dir.glob(".midepseg_2d.pt.*.tmp")) and model.stat().st_mtime_ns != first:
                break  # mid-publish, after at least one publish
            time.sleep(0.002)
        else:
            pytest.fail("the trainer never published twice within 240 s")
        os.killpg(srv.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        srv.proc.wait(timeout=30)
    finally:
        if killed_at is None:
            stop_group(srv.proc)
    checkpoint = torch.load(model, map_location="cpu", weights_only=True)
    midepseg_unet(2).load_state_dict(checkpoint["model"], strict=True)
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(srv.model_dir), {}, None)
    task = config.infer()
    task.warm_up("cpu")
    print(f"\nkilled mid-publish; {model.name} ({model.stat().st_size} bytes) loads and the infer task runs on it")


def test_rejected_labels_leave_the_pacs_and_its_cache_unchanged(tmp_path, uploads):
    """DICOMweb datastore (a fresh Orthanc with the sample CT as a series): a label that fits
    is stored as DICOM SEG; uploads that do not (unreadable, other shape, not class indices,
    OHIF ``.bin`` bytes of the wrong size), a bad tag and ids that are not series UIDs are
    answered 4xx, and afterwards the PACS holds the same series and the local cache the
    same label files, byte for byte."""
    from lib.dicomweb.orthanc import orthanc_missing
    from lib.dicomweb.stack import ohif_stack

    if orthanc_missing():
        pytest.skip(f"DICOMweb datastore test: {orthanc_missing()}")
    with ohif_stack(tmp_path / "stack") as stack:
        series = stack.geometry.series_uid
        cache = tmp_path / "stack" / "dicomweb_cache"

        def state() -> tuple:
            files = {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(cache.rglob("*")) if p.is_file() and "labels" in p.parts}
            return sorted(s["ID"] for s in stack.pacs.get_json("/series?expand")), files

        def put(image: str, tag: str, upload: tuple) -> requests.Response:
            name, content = upload
            return requests.put(f"{stack.app_url}/datastore/label", params={"image": image, "tag": tag},
                                files={"label": (name, content), "params": (None, "{}")}, timeout=120)

        # A label in the series' own geometry: the server's answer to margin points around the
        # volume's centre (a mask it wrote for that series, so it fits by construction).
        image = requests.get(f"{stack.app_url}/datastore/image", params={"image": series}, timeout=120)
        assert image.status_code == 200, image.text[:200]
        (tmp_path / "series.nii.gz").write_bytes(image.content)
        centre = np.asarray(_load(tmp_path / "series.nii.gz").shape) // 2
        margin = [(centre + d * np.eye(3, dtype=int)[axis] * 6).tolist() for axis in range(3) for d in (-1, 1)]
        answer = requests.post(f"{stack.app_url}/infer/midepseg_3d", params={"image": series, "output": "image"},
                               files={"params": (None, json.dumps({"foreground": margin, "result_extension": ".nii.gz"}))},
                               timeout=120)
        assert answer.status_code == 200, answer.text[:200]
        fitting = ("label.nii.gz", answer.content)
        good = put(series, "final", fitting)
        assert good.status_code == 200, good.text
        before = state()
        assert len(before[0]) == 2 and before[1], before  # the CT and its SEG; the cached label
        bad = [(series, "final", uploads[k]) for k in sorted(set(uploads) - set(GOOD_UPLOADS))]
        bad += [(series, "final", ("label.bin", b"\x01" * 1000)), (series, "../../x", fitting),
                ("../" + series, "final", fitting), ("1.2.3", "final", fitting), ("not-a-uid", "final", fitting)]
        for image, tag, upload in bad:
            r = put(image, tag, upload)
            assert 400 <= r.status_code < 500, (image, tag, upload[0], r.status_code, r.text[:200])
        r = requests.post(f"{stack.app_url}/infer/midepseg_3d", params={"image": "../../etc"},
                          files={"params": (None, json.dumps({"foreground": [[1, 1, 1], [5, 5, 5]]}))}, timeout=60)
        assert r.status_code == 404, r.text
        assert state() == before, "a rejected label changed what the PACS or the cache holds"


def test_a_request_past_its_budget_stops_with_503_and_the_task_keeps_answering(cases):
    """In-process: with a budget of 0 s the task stops before stage 1 with
    ``BudgetExceeded`` (the edge answers it 503 with Retry-After); the same task with a
    budget answers the same request."""
    from configs.midepseg import MIDeepSeg2DConfig
    from lib.edge.errors import http_error
    from lib.infers.budget import BudgetExceeded

    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(REPO_ROOT / "apps" / "midepseg" / "model"), {"request_budget_s": "0"}, None)
    task = config.infer()
    request = {"image": str(SAMPLE / f"{IMAGE_2D}.png"), "foreground": cases["midepseg_2d"]["margins"][0],
               "result_extension": ".nii.gz"}
    with pytest.raises(BudgetExceeded, match="time budget of 0 s") as stopped:
        task(dict(request))
    answer = http_error(stopped.value, "answering POST /infer/midepseg_2d")
    assert answer.status_code == 503 and "Retry-After" in answer.headers
    task.budget_s = 60.0
    path, result = task(dict(request))
    os.unlink(path)
    assert result["stage"] == 1 and result["voxels"] > 0


def test_the_ohif_demo_empties_only_a_work_folder_it_made(tmp_path):
    """``scripts/ohif_demo.py --work DIR`` used to delete DIR whatever it held."""
    demo = load_script("ohif_demo")
    precious = tmp_path / "mine" / "notes.txt"
    precious.parent.mkdir()
    precious.write_text("an annotator's notes")
    with pytest.raises(SystemExit, match="did not make"):
        demo.fresh_work_dir(precious.parent)
    assert precious.read_text() == "an annotator's notes"
    work = tmp_path / "demo"
    demo.fresh_work_dir(work)
    (work / "orthanc.log").write_text("old run")
    demo.fresh_work_dir(work)  # a folder it made: emptied for a fresh run
    assert [p.name for p in work.iterdir()] == [demo.MARKER]


def test_what_slicer_and_ohif_send_is_accepted(server, cases):
    """Slicer's deepgrow request carries the segment's name as ``label`` and the task's
    options as strings; OHIF adds ``restore_label_idx``; MONAILabelClient ``client_id``.
    None of it is an uploaded mask or an unknown key: stage 1 answers."""
    margin = cases["midepseg_2d"]["margins"][0]
    slicer = {"foreground": margin, "background": [], "label": "object", "margin_points": "4", "lamda": "5",
              "sigma": "0.1", "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "user-xyz"}
    ohif = {"foreground": margin, "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
            "result_compress": False, "restore_label_idx": False}
    for params in (slicer, ohif):
        status, _, text = _infer("midepseg_2d", IMAGE_2D, params).send(server.url)
        assert status == 200, text
        assert '"stage": 1' in text and '"start": "stage 1"' in text, text
