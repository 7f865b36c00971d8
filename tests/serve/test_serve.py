"""`phaselm serve`: the live token view's HTTP API on a tiny K-SSM run and a tiny grafted
Phase-Mamba run (ephemeral ports, http.client): streamed readings match the model, the
interventions act, malformed requests get 4xx JSON and the server keeps serving, a busy port is
one line and exit code 2."""

from __future__ import annotations

import http.client
import json
import re
import socket

import pytest
import torch

from live_helpers import events, get, make_grafted_run, make_kssm_run, post
from phaselm.cli import main
from phaselm.errors import PhaseLMError
from phaselm.generation import generate
from phaselm.observables import normalized_entropy, tone_of
from phaselm.serve import MAX_BODY_BYTES, load_live_model, make_server, start_in_thread


@pytest.fixture(scope="module")
def kssm_run(tmp_path_factory):
    return make_kssm_run(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="module")
def kssm_server(kssm_run):
    live = load_live_model(kssm_run, max_new_tokens=64)
    server, thread = start_in_thread(live)
    yield live, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def grafted_server(tmp_path_factory):
    run = make_grafted_run(tmp_path_factory.mktemp("live-pm"))
    live = load_live_model(run)
    server, thread = start_in_thread(live)
    yield live, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def stream(port, **body):
    status, content_type, payload = post(port, body)
    assert status == 200, payload
    assert content_type.startswith("application/x-ndjson")
    items = events(payload)
    assert items[0]["event"] == "start" and items[-1]["event"] == "done", items[-1]
    return items[0], [e for e in items if e["event"] == "token"], items[-1]


def error(port, body=None, **kwargs):
    status, content_type, payload = post(port, body, **kwargs)
    assert content_type.startswith("application/json"), payload
    data = json.loads(payload)
    assert set(data) == {"error", "status"} and data["status"] == status and "\n" not in data["error"]
    return status, data["error"]


# ---------------------------------------------------------------- pages


def test_page_and_info(kssm_server):
    _live, port = kssm_server
    status, content_type, page = get(port, "/")
    assert status == 200 and content_type.startswith("text/html")
    html = page.decode("utf-8")
    assert 'id="prompt"' in html and 'id="chart"' in html and "/api/generate" in html
    # Offline: nothing is loaded from elsewhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and not re.search(r"<script[^>]+src", html) and "@import" not in html

    status, _, body = get(port, "/api/info")
    info = json.loads(body)
    assert status == 200 and info["kind"] == "kssm" and info["oscillator_layers"] == 2 and info["has_r"]
    assert [i["kind"] for i in info["interventions"]] == ["sync", "disorder", "pin"]
    assert info["tones"][0]["name"] == "over-sync" and all(t["colour"].startswith("#") for t in info["tones"])
    assert info["limits"]["max_new_tokens"] == 64 and info["goldilocks"]["r"] == [0.8, 0.95]

    assert get(port, "/nope")[0] == 404
    assert get(port, "/api/generate")[0] == 405


# ---------------------------------------------------------------- generation


def test_stream_matches_the_model(kssm_server):
    live, port = kssm_server
    start, tokens, done = stream(port, prompt="ROMEO:", max_new_tokens=12, temperature=0)
    assert start["prompt_tokens"] == 6 and start["intervention"] is None
    assert len(tokens) == 12 and [t["index"] for t in tokens] == list(range(12))
    # The same text as measured/blind generation with the model's own generate().
    reference = generate(live.model, live.tokenizer, "ROMEO:", 12, temperature=0)
    assert done["text"] == reference.text == "".join(t["token"] for t in tokens)
    assert done["n_tokens"] == 12 and done["stopped"] == "length"

    # R per layer and U recomputed by one full forward pass over prompt + continuation.
    ids = torch.tensor([live.tokenizer.encode("ROMEO:" + done["text"])])
    with torch.no_grad():
        out = live.model(ids)
    for i, token in enumerate(tokens):
        position = 6 - 1 + i
        expected_layers = out.orders[0, :, position]
        assert token["r_layers"] == pytest.approx(expected_layers.tolist(), abs=1e-4)
        assert token["r"] == pytest.approx(float(expected_layers.mean()), abs=1e-4)
        assert token["u"] == pytest.approx(float(normalized_entropy(out.logits[0, position])), abs=1e-4)
        assert token["ru"] == pytest.approx(token["r"] * token["u"], rel=1e-9)
        assert token["tone"] == tone_of(token["r"]).name
        assert 0.0 <= token["r"] <= 1.0 and 0.0 <= token["u"] <= 1.0
    assert done["summary"]["r_mean"] == pytest.approx(sum(t["r"] for t in tokens) / 12)
    assert sum(done["summary"]["tones"].values()) == 12


def test_sampling_is_seeded(kssm_server):
    _, port = kssm_server
    first = stream(port, prompt="First:", max_new_tokens=10, temperature=1.0, seed=7)[2]["text"]
    again = stream(port, prompt="First:", max_new_tokens=10, temperature=1.0, seed=7)[2]["text"]
    assert first == again


@pytest.mark.parametrize(
    "intervention, target",
    [({"kind": "sync"}, 1.0), ({"kind": "disorder"}, 0.0), ({"kind": "pin", "value": 0.3}, 0.3), ("pin=0.6", 0.6)],
)
def test_interventions_force_r(kssm_server, intervention, target):
    _, port = kssm_server
    start, tokens, _ = stream(port, prompt="ROMEO:", max_new_tokens=5, temperature=0, intervention=intervention)
    assert start["intervention"]["target_order"] == target and start["intervention"]["layers"] == [0, 1]
    for token in tokens:
        assert token["r_layers"] == pytest.approx([target, target], abs=1e-4)


def test_intervention_on_one_layer_is_restored(kssm_server):
    live, port = kssm_server
    _, tokens, _ = stream(port, prompt="ROMEO:", max_new_tokens=4, temperature=0,
                          intervention={"kind": "sync", "layers": [1]})
    assert all(t["r_layers"][1] == pytest.approx(1.0, abs=1e-5) and t["r_layers"][0] < 0.999 for t in tokens)
    from phaselm.interventions import phase_sites

    assert all(site.phase_transforms == [] for site in phase_sites(live.model))  # removed after the request
    plain = stream(port, prompt="ROMEO:", max_new_tokens=4, temperature=0)[1]
    assert plain[0]["r_layers"][1] < 0.999


def test_grafted_model(grafted_server):
    live, port = grafted_server
    info = json.loads(get(port, "/api/info")[2])
    assert info["kind"] == "grafted" and info["graft_layer"] == "backbone.layers.1"
    assert [i["kind"] for i in info["interventions"]] == ["core_off"]
    _, tokens, done = stream(port, prompt="ROMEO:", max_new_tokens=6, temperature=0)
    assert all(0.0 <= t["r"] <= 1.0 and t["tone"] == tone_of(t["r"]).name and "r_layers" not in t for t in tokens)
    reference = generate(live.model, live.tokenizer, "ROMEO:", 6, temperature=0, handle=live.handle, measured=True)
    assert done["text"] == reference.text
    assert [t["r"] for t in tokens] == pytest.approx([r.r for r in reference.readings], abs=1e-5)

    start, tokens, done = stream(port, prompt="ROMEO:", max_new_tokens=6, temperature=0,
                                 intervention={"kind": "core_off"})
    assert start["intervention"] == {"kind": "core_off"}
    assert all(t["r"] is None and t["ru"] is None and t["tone"] is None and t["u"] > 0 for t in tokens)
    with live.handle.disabled():
        bare = generate(live.model, live.tokenizer, "ROMEO:", 6, temperature=0)
    assert done["text"] == bare.text and live.handle.enabled  # the core is back on after the request
    status, message = error(port, {"prompt": "x", "intervention": {"kind": "sync"}})
    assert status == 400 and "unknown intervention 'sync'" in message and "core_off" in message


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"max_new_tokens": 4}, 400, "missing field 'prompt'"),
        ({"prompt": ""}, 400, "non-empty"),
        ({"prompt": 3}, 400, "non-empty string"),
        ([1, 2], 400, "JSON object"),
        ({"prompt": "x", "tokens": 3}, 400, "unknown field 'tokens'"),
        ({"prompt": "x", "max_new_tokens": 10**6}, 400, "too many tokens"),
        ({"prompt": "x", "max_new_tokens": 0}, 400, "'max_new_tokens' must be ≥ 1"),
        ({"prompt": "x", "max_new_tokens": "9"}, 400, "must be an integer"),
        ({"prompt": "x", "temperature": -1}, 400, "'temperature' must be in"),
        ({"prompt": "x", "seed": 1.5}, 400, "'seed' must be an integer"),
        ({"prompt": "x", "intervention": {"kind": "melt"}}, 400, "unknown intervention 'melt'"),
        ({"prompt": "x", "intervention": "melt"}, 400, "unknown intervention 'melt'"),
        ({"prompt": "x", "intervention": {"kind": "pin", "value": 1.5}}, 400, "[0, 1]"),
        ({"prompt": "x", "intervention": {"kind": "pin", "value": -0.1}}, 400, "[0, 1]"),
        ({"prompt": "x", "intervention": {"kind": "pin"}}, 400, "needs a value"),
        ({"prompt": "x", "intervention": {"kind": "sync", "value": 0.5}}, 400, "takes no value"),
        ({"prompt": "x", "intervention": {"kind": "sync", "layers": [5]}}, 400, "out of range"),
        ({"prompt": "x", "intervention": {"kind": "sync", "where": 1}}, 400, "unknown intervention field"),
        ({"prompt": "x", "intervention": 7}, 400, "'intervention' must be an object"),
        ({"prompt": "ROMEO: \u00e9\u00e9"}, 400, "cannot encode the prompt"),
    ],
)
def test_malformed_requests_are_4xx(kssm_server, body, status, fragment):
    _, port = kssm_server
    got, message = error(port, body)
    assert got == status and fragment in message, message


def test_malformed_transport_and_server_keeps_serving(kssm_server):
    _, port = kssm_server
    assert error(port, raw=b'{"prompt": ') == (400,
                                               "the request body is not valid JSON: Expecting value: line 1 column 12 "
                                               "(char 11)")
    status, message = error(port, raw=b"\xff\xfe")
    assert status == 400 and "not valid JSON" in message
    assert error(port, {"prompt": "x"}, content_type="text/plain")[0] == 415
    assert error(port, raw=b"x" * (MAX_BODY_BYTES + 1))[0] == 413
    assert error(port, {"prompt": "x"}, path="/api/info")[0] == 405
    assert error(port, {"prompt": "x"}, path="/elsewhere")[0] == 404
    # DNS rebinding: a loopback server answers only loopback host names.
    status, _, body = get(port, "/api/info", headers={"Host": "attacker.example:80"})
    assert status == 403 and "not served" in json.loads(body)["error"]
    # A client that goes away mid-stream does not wedge the server.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/generate", body=json.dumps({"prompt": "ROMEO:", "max_new_tokens": 64}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert json.loads(response.readline())["event"] == "start"
    response.close()
    conn.close()
    _, tokens, done = stream(port, prompt="ROMEO:", max_new_tokens=3, temperature=0)
    assert len(tokens) == 3 and done["stopped"] == "length"


def test_port_in_use_is_one_line(kssm_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(kssm_run), "--port", str(port)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} is in use; pass --port\n"


def test_serve_bad_arguments(tmp_path, capsys):
    for args, fragment in (
        (["serve", str(tmp_path / "missing")], "does not exist"),
        (["serve", str(tmp_path), "--port", "0"], "neither a run directory nor a model folder"),
        (["serve", str(tmp_path), "--port", "70000"], "--port must be in 0..65535"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    with pytest.raises(PhaseLMError, match=r"--port must be in 0\.\.65535"):
        make_server("127.0.0.1", -1)


def test_model_without_oscillators(tmp_path):
    """A GPT-2 model folder: U per token, no R or tone, no interventions, its context limit enforced."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from live_helpers import write_corpus
    from phaselm.backbones import save_backbone
    from phaselm.data import CharTokenizer

    tokenizer = CharTokenizer.from_text(write_corpus(tmp_path).read_text(encoding="utf-8"))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=32,
                                       bos_token_id=None, eos_token_id=None))
    save_backbone(model.eval(), tokenizer, tmp_path / "gpt")
    live = load_live_model(tmp_path / "gpt")
    server, thread = start_in_thread(live)
    port = server.server_address[1]
    try:
        info = json.loads(get(port, "/api/info")[2])
        assert info["kind"] == "plain" and info["interventions"] == [] and not info["has_r"]
        _, tokens, done = stream(port, prompt="ROMEO:", max_new_tokens=5, temperature=0)
        assert all(t["r"] is None and t["tone"] is None and 0 < t["u"] <= 1 for t in tokens)
        assert done["summary"]["r_mean"] is None and done["summary"]["tones"] == {}
        status, message = error(port, {"prompt": "ROMEO:", "max_new_tokens": 5, "intervention": "sync"})
        assert status == 400 and "no oscillators" in message
        status, message = error(port, {"prompt": "ROMEO:", "max_new_tokens": 30})
        assert status == 400 and "exceed the model's 32 positions" in message
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_stalled_or_vanishing_client_is_dropped_quietly(kssm_server, capfd, monkeypatch):
    """A lying Content-Length times out instead of holding a thread; hang-ups print no traceback."""
    import time

    from phaselm import serve

    monkeypatch.setattr(serve.Handler, "timeout", 0.5)
    _, port = kssm_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server closed the connection
        assert time.monotonic() - started < 5
    for _ in range(3):  # hang up before, during and after the request line
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /api/gen")
    _, tokens, _ = stream(port, prompt="ROMEO:", max_new_tokens=2, temperature=0)  # still serving
    assert len(tokens) == 2
    assert "Traceback" not in capfd.readouterr().err
