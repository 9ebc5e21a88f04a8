"""Fast serving paths (issue 8): every backend against the eager fp32 reference."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from elasticdenser.model import fastpath
from elasticdenser.model.encoder import ElasticEncoder

TEXTS = [
    "who sang the song i will always love you",
    "what is the capital city of australia",
    "a",
    "",
    "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Roentgen, of Germany, "
    "who received 150,782 SEK, which is equal to 7,731,004 SEK in December 2007.",
    "how many episodes are in season 5 of game of thrones",
    "Maria Sklodowska-Curie also won two Nobel Prizes, for physics in 1903 and chemistry in 1911.",
]
#: the exact fp32 paths ("openvino" computes in bf16 on a CPU with bf16 products: tested on its own)
FAST = [b for b in fastpath.exact_backends() if b not in ("auto", "eager")]
needs_openvino = pytest.mark.skipif("openvino" not in fastpath.available_backends(), reason="openvino not installed")


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("ELASTICDENSER_CACHE", "off")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return ElasticEncoder.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return ElasticEncoder.from_pretrained(minilm_path)


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("backend", FAST)
def test_tiny_every_default_point_matches_eager(tiny, backend):
    for p in tiny.default_points():
        ref = tiny.encode(TEXTS, p, batch_size=3, backend="eager")
        fast = tiny.encode(TEXTS, p, batch_size=3, backend=backend)
        assert fast.shape == ref.shape == (len(TEXTS), p.width) and fast.dtype == np.float32
        assert _cos(fast, ref).min() >= 0.999
        assert np.abs(fast - ref).max() < 1e-4
        one = tiny.encode(TEXTS[0], p, backend=backend)  # batch 1, a bare string
        assert _cos(one, ref[:1]).min() >= 0.999


def test_switch_default_and_validation(tiny, monkeypatch):
    import inspect

    assert inspect.signature(ElasticEncoder.encode).parameters["backend"].default is None  # None = eager, the reference
    with pytest.raises(ValueError, match="unknown encoder backend"):
        tiny.encode(TEXTS, backend="tensorrt")
    assert fastpath.resolve_backend("auto") in ("onnx", "jit")
    monkeypatch.setattr(fastpath, "_has_onnxruntime", lambda: False)
    assert fastpath.resolve_backend("auto") == "jit"  # clean fallback without onnxruntime
    assert "onnx" not in fastpath.available_backends()
    with pytest.raises(RuntimeError, match="onnxruntime"):
        fastpath.resolve_backend("onnx")
    ref = tiny.encode(TEXTS, None, backend="eager")
    assert _cos(tiny.encode(TEXTS, None, backend="auto"), ref).min() >= 0.999
    assert tiny.encode([], None, backend="auto").shape == (0, tiny.space.hidden_size)


def test_backend_argument_and_bf16_fallback(tiny, monkeypatch):
    ref = tiny.encode(TEXTS, None)
    calls = []
    real = fastpath.encode_fast
    monkeypatch.setattr(fastpath, "encode_fast", lambda *a, **k: calls.append(k["backend"]) or real(*a, **k))
    got = tiny.encode(TEXTS, None, backend="auto")
    assert calls and _cos(got, ref).min() >= 0.999
    calls.clear()
    tiny.encode(TEXTS, None, backend="auto", bf16=True)  # bf16 is an opt-in of the eager path
    tiny.encode(TEXTS, None, backend="eager")
    assert not calls


@pytest.mark.skipif("onnx" not in FAST, reason="onnxruntime not installed")
def test_runner_cache_rebuilds_after_weight_update(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICDENSER_CACHE", str(tmp_path))
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir)
    p = enc.default_points()[-1]
    r1 = fastpath.get_runner(enc, p, "onnx")
    assert fastpath.get_runner(enc, p, "onnx") is r1
    assert list(tmp_path.rglob(f"{p.name}.onnx"))  # cached on disk, keyed by the fingerprint
    with torch.no_grad():
        enc.model.encoder.layer[0].intermediate.dense.weight.mul_(1.5)
    r2 = fastpath.get_runner(enc, p, "onnx")
    assert r2 is not r1
    assert len(list(tmp_path.rglob(f"{p.name}.onnx"))) == 2
    assert fastpath.get_runner(enc, p, "onnx") is r2  # nothing changed: the cached runner
    enc.to(torch.float32)  # .to()/.half() may swap parameter data without a version bump
    assert fastpath.get_runner(enc, p, "onnx") is not r2
    r3 = fastpath.get_runner(enc, p, "onnx")
    new = copy.deepcopy(enc.model)  # a replaced model whose version counters add up to the old ones'
    with torch.no_grad():
        new.encoder.layer[0].intermediate.dense.weight.data.mul_(1.5)  # through .data: no version bump
        lead = next(new.parameters())
        for _ in range(sum(q._version for q in enc.model.parameters()) - sum(q._version for q in new.parameters())):
            lead.add_(0)
    enc.model = new
    assert fastpath.get_runner(enc, p, "onnx") is not r3
    assert _cos(enc.encode(TEXTS, p, backend="onnx"), enc.encode(TEXTS, p, backend="eager")).min() >= 0.999
    # explicit thread counts give the same embeddings
    b = enc.tokenizer(TEXTS, padding=True, return_tensors="np")
    a1 = r2(b["input_ids"], b["attention_mask"], b["token_type_ids"], threads=1)
    a2 = r2(b["input_ids"], b["attention_mask"], b["token_type_ids"], threads=2)
    assert np.abs(a1 - a2).max() < 1e-5


@pytest.mark.skipif("int8" not in fastpath.available_backends(), reason="onnxruntime not installed")
def test_int8_is_quantised_opt_in_and_close(tiny_bert_dir, tmp_path, monkeypatch):
    """int8 is never picked by "auto"; its graph really runs int8 weight products; it stays close."""
    import onnx

    assert fastpath.resolve_backend("auto") == "onnx"
    monkeypatch.setenv("ELASTICDENSER_CACHE", str(tmp_path))
    tiny = ElasticEncoder.from_pretrained(tiny_bert_dir)
    p = tiny.default_points()[0]
    fastpath.get_runner(tiny, p, "onnx")
    fastpath.get_runner(tiny, p, "int8")
    fp32, int8 = (onnx.load(str(next(tmp_path.rglob(f"{p.name}{s}.onnx")))) for s in ("", ".int8"))
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    weight_products = sum(1 for n in fp32.graph.node if n.op_type == "MatMul"
                          and n.input[1] in {i.name for i in fp32.graph.initializer})
    assert weight_products == 4 * p.layers  # fused QKV, attention output, FFN in, FFN out
    assert ops(int8).count("MatMulInteger") == weight_products
    assert ops(int8).count("MatMul") == ops(fp32).count("MatMul") - weight_products  # attention stays fp32
    ref = tiny.encode(TEXTS, p, backend="eager")
    got = tiny.encode(TEXTS, p, backend="int8")
    assert got.shape == ref.shape and _cos(got, ref).min() >= 0.98


def test_minilm_smallest_point_retrieval_matches_eager(minilm, data_dir):
    """Real MiniLM, smallest default point, real nq-sample text: cosine and MRR@10 / nDCG@10."""
    from ranx import Qrels, Run, evaluate

    from elasticdenser.data import load_collection

    col = load_collection("nq-sample", data_dir)
    queries = [q for q in col.queries if q.query_id in col.qrels][:32]
    gold = {d for q in queries for d in col.qrels[q.query_id]}
    docs = [d for d in col.corpus if d.doc_id in gold]
    docs += [d for d in list(col.corpus)[:400] if d.doc_id not in gold][: 64 - len(docs)]
    p = minilm.default_points()[-1]
    qtexts = [q.text for q in queries]
    dref = minilm.encode([d.contents for d in docs], p, batch_size=16, max_length=96, backend="eager")
    backend = fastpath.resolve_backend("auto")
    dfast = minilm.encode([d.contents for d in docs], p, batch_size=16, max_length=96, backend=backend)
    assert _cos(dfast, dref).min() >= 0.999
    qref = minilm.encode(qtexts, p, batch_size=16, backend="eager")
    qfast = minilm.encode(qtexts, p, batch_size=16, backend=backend)
    assert _cos(qfast, qref).min() >= 0.999
    qone = np.concatenate([minilm.encode(t, p, backend=backend) for t in qtexts[:8]])
    assert _cos(qone, qref[:8]).min() >= 0.999

    ids = [d.doc_id for d in docs]
    qrels = Qrels({q.query_id: {d: int(g) for d, g in col.qrels[q.query_id].items()} for q in queries})

    def score(q):
        s = q @ dref.T
        return evaluate(qrels, Run({qq.query_id: {ids[j]: float(s[i, j]) for j in np.argsort(-s[i])[:10]}
                                    for i, qq in enumerate(queries)}), ["mrr@10", "ndcg@10"])

    ref, fast = score(qref), score(qfast)
    for m in ("mrr@10", "ndcg@10"):
        assert abs(ref[m] - fast[m]) <= 0.002, (m, ref, fast)
    if "int8" in fastpath.available_backends():  # opt-in: close, not exact (cosine ~0.99 measured)
        q8 = minilm.encode(qtexts, p, batch_size=16, backend="int8")
        assert _cos(q8, qref).min() >= 0.98
        low = score(q8)
        assert all(abs(ref[m] - low[m]) <= 0.02 for m in ("mrr@10", "ndcg@10")), (ref, low)


@needs_openvino
def test_openvino_in_fp32_matches_eager_and_is_thread_safe(tiny_bert_dir, monkeypatch):
    """Forced to fp32 (what it runs on a CPU without bf16 products) it is exact; several threads
    calling one runner (the server's worker threads) each get their own, correct, results."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(fastpath, "openvino_precision", lambda: "fp32")
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir)
    for p in enc.default_points():
        ref = enc.encode(TEXTS, p, batch_size=3, backend="eager")
        got = enc.encode(TEXTS, p, batch_size=3, backend="openvino")
        assert fastpath.get_runner(enc, p, "openvino").precision == "fp32"
        assert got.shape == ref.shape and got.dtype == np.float32 and np.abs(got - ref).max() < 1e-4
    p = enc.default_points()[-1]
    ref = enc.encode(TEXTS, p, backend="eager")
    many = TEXTS * 5  # 35 rows on 2 threads
    runner = fastpath.get_runner(enc, p, "openvino")
    b = enc.tokenizer(many, padding=True, return_tensors="np")
    session = runner._session(2)
    tokens = b["input_ids"].size
    for limit, streams in ((tokens, 1), (tokens - 1, 2)):  # one request on one stream / 5 trimmed sub-batches on 2
        monkeypatch.setattr(session, "ONE_STREAM_TOKENS", limit)
        session._compiled.clear()
        session._local = threading.local()  # this thread's request was made on a compiled model cleared here
        got = runner(b["input_ids"], b["attention_mask"], b["token_type_ids"], threads=2)
        assert list(session._compiled) == [streams] and np.abs(got - np.tile(ref, (5, 1))).max() < 1e-4
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: enc.encode([TEXTS[i % len(TEXTS)]], p, backend="openvino"), range(40)))
    for i, out in enumerate(outs):
        assert np.abs(out[0] - ref[i % len(TEXTS)]).max() < 1e-4, i
    # small batches on 2 threads from 4 callers at once: the one-stream model compiled once, on first use
    session._compiled.clear()
    pairs = [enc.tokenizer([TEXTS[i % 7], TEXTS[(i + 1) % 7]], padding=True, return_tensors="np") for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda b: runner(b["input_ids"], b["attention_mask"], b["token_type_ids"], threads=2), pairs))
    assert list(session._compiled) == [1]
    for i, out in enumerate(outs):
        assert np.abs(out - ref[[i % 7, (i + 1) % 7]]).max() < 1e-4, i


@needs_openvino
@pytest.mark.skipif(not __import__("elasticdenser.model.cpu", fromlist=["x"]).native_bf16(),
                    reason="this CPU has no bf16 products (openvino runs fp32 here)")
def test_openvino_runs_bf16_on_this_cpu_and_stays_within_the_bar(minilm, data_dir):
    """Real MiniLM on real passages: the compiled model really computes in bf16, and every default
    point's vectors stay at cosine >= 0.999 to the eager fp32 reference."""
    from elasticdenser.data import load_collection

    passages = [d.contents for d in load_collection("nq-sample", data_dir).corpus][:48]
    for p in (minilm.default_points()[0], minilm.default_points()[-1]):
        runner = fastpath.get_runner(minilm, p, "openvino")
        assert runner.precision == "bf16"
        session = runner._session(1)
        assert "bfloat16" in str(session._model(1).get_property("INFERENCE_PRECISION_HINT"))
        ref = minilm.encode(passages, p, batch_size=16, backend="eager")
        got = minilm.encode(passages, p, batch_size=16, backend="openvino")
        cos = _cos(got, ref)
        assert cos.min() >= 0.999 and np.abs(got - ref).max() > 1e-6, (p.name, cos.min())  # close, not fp32


@needs_openvino
def test_auto_runs_large_query_batches_in_bf16_only_where_the_cpu_has_it(tiny_bert_dir, monkeypatch):
    """On a CPU with bf16 products, "auto" sends batches of AUTO_BF16_MIN_BATCH rows and more to
    OpenVINO bf16 and smaller ones to the exact backend; elsewhere, and for a named backend, never."""
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir)
    exact = fastpath.resolve_backend("auto")
    calls = []
    real = fastpath.FastRunner.__call__
    monkeypatch.setattr(fastpath.FastRunner, "__call__",
                        lambda self, ids, *a, **k: calls.append((self.backend, len(ids))) or real(self, ids, *a, **k))
    texts = TEXTS * 3  # 21 rows: batches of 8, 8 and 5
    n = fastpath.AUTO_BF16_MIN_BATCH
    for native, want in ((True, [("openvino", n), ("openvino", n), (exact, 21 - 2 * n)]),
                         (False, [(exact, n), (exact, n), (exact, 21 - 2 * n)])):
        monkeypatch.setattr(fastpath, "openvino_precision", lambda v=native: "bf16" if v else "fp32")
        calls.clear()
        got = enc.encode(texts, None, batch_size=n, backend="auto")
        assert calls == want, native
        assert _cos(got, enc.encode(texts, None, backend="eager")).min() >= 0.999
        calls.clear()
        enc.encode(texts, None, batch_size=n, backend=exact)  # a named backend is that backend
        enc.encode(texts[:n - 1], None, batch_size=32, backend="auto")  # a small call: exact
        assert {b for b, _ in calls} == {exact}


def test_document_path_follows_the_cpu_and_the_installed_packages(monkeypatch):
    """--precision auto is bf16 only where it is fast (OpenVINO on bf16 hardware); fp32 elsewhere."""
    exact = fastpath.resolve_backend("auto")  # onnx, else jit: never "auto", which may run batches in bf16
    cases = {  # (openvino installed, native bf16, device, precision) -> (backend, autocast, used)
        (True, True, "cpu", "auto"): ("openvino", False, "bf16"),
        (True, True, "cpu", "bf16"): ("openvino", False, "bf16"),
        (True, True, "cpu", "fp32"): (exact, False, "fp32"),
        (True, False, "cpu", "auto"): (exact, False, "fp32"),
        (False, True, "cpu", "auto"): (exact, False, "fp32"),
        (False, True, "cpu", "bf16"): ("eager", True, "bf16"),
        (True, False, "cpu", "bf16"): ("eager", True, "bf16"),  # asked for: autocast (and a warning from the CLI)
        (True, True, "cuda", "auto"): ("eager", False, "fp32"),
        (True, True, "cuda", "bf16"): ("eager", True, "bf16"),
        (True, True, "cpu", None): ("openvino", False, "bf16"),
    }
    for (has_ov, native, device, precision), want in cases.items():
        monkeypatch.setattr(fastpath, "_has_openvino", lambda v=has_ov: v)
        monkeypatch.setattr(fastpath, "openvino_precision", lambda v=native: "bf16" if v else "fp32")
        assert fastpath.document_path(precision, device) == want, (has_ov, native, device, precision)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        fastpath.document_path("fp8")
    monkeypatch.setattr(fastpath, "_has_openvino", lambda: False)
    assert "openvino" not in fastpath.available_backends()
    with pytest.raises(RuntimeError, match="needs openvino"):
        fastpath.resolve_backend("openvino")


def test_cpu_features_decide_native_bf16_from_the_flags(monkeypatch):
    from elasticdenser.model import cpu

    avx2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: avx2\n"
    assert cpu.parse_cpuinfo(avx2) == ("AMD EPYC", {"fpu", "sse2", "avx2", "fma"})
    sapphire = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    zen5 = "processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: avx2 avx512_bf16\n"
    assert cpu.parse_cpuinfo(zen5) == ("AMD EPYC (family 26, model 2)", {"avx2", "avx512_bf16"})
    for text, native in ((avx2, False), (sapphire, True)):
        cpu.cpu_features.cache_clear()
        monkeypatch.setattr(cpu, "Path", lambda _p, t=text: type("F", (), {"read_text": lambda self: t})())
        assert cpu.native_bf16() is native
        assert cpu.cpu_features()["flags"]["avx2"] and cpu.cpu_features()["model"] in cpu.cpu_features()["summary"]
    cpu.cpu_features.cache_clear()


def test_the_backend_tokenizer_gives_the_transformers_ids_masks_and_types(tiny):
    texts = ["who wrote hamlet", "Ünïcödé  text\twith TABS and CAPS", "word " * 400, "", "a"] + TEXTS
    for max_length in (16, tiny.max_length):
        tok = fastpath.batch_tokenizer(tiny, max_length)
        assert tok is fastpath.batch_tokenizer(tiny, max_length)  # configured once
        ref = tiny.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        got = fastpath.tokenize_batch(tiny, texts, max_length)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert got[key].dtype == np.int64
            np.testing.assert_array_equal(got[key], ref[key])
    # a configured copy: the shared tokenizer's own backend keeps its settings
    assert tok is not tiny.tokenizer.backend_tokenizer
    tiny.tokenizer.truncation_side = "left"  # the copy truncates on the right: left is the transformers call's
    try:
        assert fastpath.batch_tokenizer(tiny, 16) is None
        np.testing.assert_array_equal(fastpath.tokenize_batch(tiny, texts, 16)["input_ids"],
                                      tiny.tokenizer(texts, padding=True, truncation=True, max_length=16)["input_ids"])
    finally:
        tiny.tokenizer.truncation_side = "right"


def test_small_batches_run_on_the_thread_count_this_cpu_runs_faster(tiny, monkeypatch):
    """Up to SMALL_BATCH rows run on one thread or on all, whichever one query runs faster on here:
    measured once per runner and torch thread count, never assumed; a fixed count or ``threads`` wins."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    p = tiny.default_points()[-1]
    b = tiny.tokenizer(TEXTS[:5], padding=True, return_tensors="np")
    one, five = ([b[k][:n] for k in ("input_ids", "attention_mask", "token_type_ids")] for n in (1, 5))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for slow, faster in ((2, 1), (1, 2)):
            runner = fastpath.FastRunner(tiny, p, "jit")
            real, seen = runner._run, []

            def run(n, *inputs, slow=slow, real=real, seen=seen):
                seen.append(n)
                if n == slow:
                    time.sleep(0.003)
                return real(n, *inputs)

            monkeypatch.setattr(runner, "_run", run)
            got = runner(*one)
            assert sorted(set(seen)) == [1, 2] and len(seen) == 2 * (fastpath.THREADS_PROBES + 1) + 1
            assert seen[-1] == faster and runner._small_threads == {2: faster}
            assert np.abs(got - tiny.encode(TEXTS[:1], p, backend="eager")).max() < 1e-4
            seen.clear()
            runner(*one), runner(*five), runner(*one, threads=1)  # measured once; 5 rows on all; as told
            assert seen == [faster, 2, 1]
            monkeypatch.setattr(fastpath, "small_batch_threads", 2 if faster == 1 else 1)
            seen.clear()
            runner(*one)
            assert seen == [3 - faster]
            monkeypatch.setattr(fastpath, "small_batch_threads", None)
        shared, calls = fastpath.FastRunner(tiny, p, "jit"), []
        monkeypatch.setattr(shared, "_run", lambda n, *inputs, real=shared._run: calls.append(n) or real(n, *inputs))
        with ThreadPoolExecutor(4) as pool:  # four first calls at once: one measurement
            list(pool.map(lambda _: shared(*one), range(4)))
        assert len(calls) == 2 * (fastpath.THREADS_PROBES + 1) + 4 and len(shared._small_threads) == 1
        torch.set_num_threads(1)
        seen.clear()
        runner(*one)  # one thread in all: nothing to measure
        assert seen == [1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("rust", [True, False])
def test_batches_are_cut_by_token_count_and_padded_as_the_transformers_call_pads(tiny, monkeypatch, rust):
    """Texts whose order by characters is not their order by tokens: every batch holds the texts
    closest in token count within its window (least padding), in positions that cover every text once."""
    from elasticdenser.model import batch_tokenizer as bt

    if not rust:
        monkeypatch.setattr(bt, "batch_tokenizer", lambda *a, **k: None)
    texts = ["a b c d e f g h i j k l", "internationalisation", "x y z w v u t s", "antidisestablishment",
             "hi", "one two"] + TEXTS
    lengths = [len(ids) for ids in tiny.tokenizer(texts, truncation=True, max_length=32)["input_ids"]]
    assert sorted(range(len(texts)), key=lambda i: -lengths[i]) != sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    assert list(bt.length_batches(tiny, [], 32, 3)) == []
    for bs, window in ((3, 8), (64, 8), (3, 2)):  # batches in one window; one batch (queries); windows of 6 texts
        monkeypatch.setattr(bt, "WINDOW_BATCHES", window)
        seen, padded, longest = [], 0, []
        for idx, b in bt.length_batches(tiny, texts, 32, bs, tensors="pt"):
            ref = tiny.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=32, return_tensors="pt")
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                assert b[key].dtype == torch.int64 and torch.equal(b[key], ref[key])
            seen += idx
            padded += b["input_ids"].numel()
            longest += b["attention_mask"].sum(1).tolist()
        assert sorted(seen) == list(range(len(texts)))
        span = len(texts) if bs >= len(texts) else bs * window
        ranked = [sorted(lengths[lo : lo + span], reverse=True) for lo in range(0, len(texts), span)]
        assert longest == [n for r in ranked for n in r]
        assert padded == sum(len(r[i : i + bs]) * r[i] for r in ranked for i in range(0, len(r), bs))  # the least possible
