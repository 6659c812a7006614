"""Phase-3 advisors, their config and how the env fuses their advice (tuner/trading/advisor.py)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from checkpointing.errors import ConfigError
from tests.unit.data.handmade import make_data
from tuner.trading.advisor import (
    ADVISOR_METADATA_FIELDS,
    Advice,
    Advisor,
    AdvisorCounters,
    AdvisorError,
    HttpAdvisor,
    HttpAdvisorConfig,
    MarketState,
    RuleAdvisor,
    build_advisor,
    load_advisor_config,
    parse_advice,
)
from tuner.trading.env import EnvConfig, FuturesTradingEnv
from tuner.trading.features import FEATURE_NAMES

ROOT = Path(__file__).resolve().parents[2]
LLM_CONFIG = ROOT / "config" / "llm_config.yaml"
DATA = make_data([100.0 + (i % 7) for i in range(80)])  # train split: 40 bars
FLAT, LONG1, LONG2, SHORT1 = 3, 4, 5, 2  # target = action - 3


@dataclass
class Scripted:
    """Returns the given advice (or raises it) on every call; records what it saw."""

    answer: Advice | Exception | None
    seen: list[tuple[int, int]] = field(default_factory=list)

    def advise(self, state: MarketState, rl_target: int) -> Advice | None:
        self.seen.append((state.position, rl_target))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def phase3(advisor: Advisor, consult_every: int = 1) -> FuturesTradingEnv:
    cfg = EnvConfig(consult_every=consult_every, min_confidence=0.6, stop_atr_multiple=0.0)
    env = FuturesTradingEnv(DATA, "train", 3, config=cfg, advisor=advisor, evaluation=True)
    env.reset()
    return env


def positions_after(env: FuturesTradingEnv, actions: list[int]) -> list[int]:
    for a in actions:
        env.step(a)
    return env.episode_stats().positions.tolist()


# --- fusion: override, veto, errors -------------------------------------------------------


def test_confident_advice_overrides_the_rl_action() -> None:
    env = phase3(Scripted(Advice(1, 0.9)))
    assert positions_after(env, [FLAT, SHORT1, LONG1]) == [1, 1, 1]
    counts = env.episode_stats().advisor
    assert counts is not None
    assert (counts.consults, counts.answers, counts.overrides, counts.agreements) == (3, 3, 2, 1)
    meta = counts.metadata()
    assert meta["rl_llm_agreement_rate"] == pytest.approx(1 / 3)
    assert meta["llm_confidence_avg"] == pytest.approx(0.9)
    assert meta["reasoning_usage_rate"] == 1.0


def test_unconfident_advice_is_ignored_but_counted() -> None:
    env = phase3(Scripted(Advice(-1, 0.3, veto=True)))
    assert positions_after(env, [LONG1, LONG1]) == [1, 1]
    counts = env.episode_stats().advisor
    assert counts is not None and counts.overrides == 0 and counts.vetoes == 0
    assert counts.metadata()["llm_confidence_avg"] == pytest.approx(0.3)


def test_veto_blocks_new_risk_but_allows_exits() -> None:
    veto = Scripted(Advice(None, 1.0, veto=True))
    env = phase3(veto)
    # entry refused (stays flat); later, from a long: add refused, reversal becomes exit
    assert positions_after(env, [LONG1, LONG2]) == [0, 0]
    advisor = Scripted(None)  # abstains at first: the RL opens 2 contracts
    env = phase3(advisor)
    positions_after(env, [LONG2])
    advisor.answer = Advice(None, 1.0, veto=True)
    assert positions_after(env, [6, LONG1, SHORT1]) == [2, 2, 1, 0]
    counts = env.episode_stats().advisor
    assert counts is not None and counts.vetoes == 2  # the add and the reversal
    assert math.isnan(counts.metadata()["rl_llm_agreement_rate"])  # no target ever named


def test_advisor_exceptions_and_invalid_advice_count_as_errors() -> None:
    for answer in (RuntimeError("boom"), Advice(7, 0.9), Advice(1, math.nan), Advice(1, 1.5)):
        env = phase3(Scripted(answer))
        assert positions_after(env, [LONG1, FLAT, SHORT1]) == [1, 0, -1]  # RL actions kept
        counts = env.episode_stats().advisor
        assert counts is not None and counts.errors == 3 and counts.answers == 0


def test_consult_every_n_steps() -> None:
    advisor = Scripted(None)
    env = phase3(advisor, consult_every=4)
    positions_after(env, [FLAT] * 10)
    counts = env.episode_stats().advisor
    assert counts is not None and (counts.steps, counts.consults) == (10, 3)  # steps 0, 4, 8
    assert counts.metadata()["reasoning_usage_rate"] == pytest.approx(0.3)
    assert math.isnan(counts.metadata()["llm_confidence_avg"])


def test_counters_add_up_and_report_the_six_metadata_fields() -> None:
    a = AdvisorCounters(steps=10, consults=5, answers=4, confidence_sum=3.0, action_advices=2)
    b = AdvisorCounters(steps=10, consults=5, answers=1, confidence_sum=0.5, agreements=1)
    total = a + b
    assert (total.steps, total.answers, total.agreements) == (20, 5, 1)
    meta = total.metadata()
    assert tuple(meta) == ADVISOR_METADATA_FIELDS
    assert meta["reasoning_usage_rate"] == 0.5
    assert meta["llm_confidence_avg"] == pytest.approx(0.7)
    assert meta["rl_llm_agreement_rate"] == 0.5


# --- the rule-based advisor ---------------------------------------------------------------


def state(drawdown: float = 0.0, **features: float) -> MarketState:
    values = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    for name, value in features.items():
        values[FEATURE_NAMES.index(name)] = value
    return MarketState("NQ", np.datetime64("2024-01-02T10:00"), 100.0, 1.0, values, FEATURE_NAMES,
                       0, 3, 0.0, 100_000.0, drawdown)  # fmt: skip


def test_rule_advisor_follows_trends_and_vetoes_risk() -> None:
    rules = RuleAdvisor()
    up = rules.advise(state(ret_16=3.0, ret_64=3.0), rl_target=-2)
    assert up is not None and up.target_position == 2 and up.confidence == 1.0
    down = rules.advise(state(ret_16=-2.0, ret_64=-1.5), rl_target=0)
    assert down is not None and down.target_position == -1
    assert down.confidence == pytest.approx(1.75 / 3.0)
    assert rules.advise(state(ret_16=0.5, ret_64=-0.2), rl_target=1) is None
    crash = rules.advise(state(drawdown=0.08, ret_16=3.0, ret_64=3.0), rl_target=1)
    assert crash is not None and crash.veto and crash.target_position is None
    spike = rules.advise(state(vol_ratio=math.log(3.0)), rl_target=1)
    assert spike is not None and spike.veto


def test_phase3_defaults_to_the_rule_advisor() -> None:
    env = FuturesTradingEnv(DATA, "train", 3)
    assert isinstance(env._advisor, RuleAdvisor)
    with pytest.raises(ValueError, match="an advisor is only used in phase 3"):
        FuturesTradingEnv(DATA, "train", 2, advisor=RuleAdvisor())


# --- reply parsing and config -------------------------------------------------------------


def test_parse_advice_accepts_fenced_json_and_refuses_garbage() -> None:
    text = 'Sure:\n```json\n{"target_position": -2, "confidence": 0.8, "veto": false}\n```'
    assert parse_advice(text, max_position=3) == Advice(-2, 0.8, False, "")
    assert parse_advice('{"target_position": null, "confidence": 1}', 1).target_position is None
    for bad, message in [
        ("no json here", "no JSON object"),
        ("{'single': quotes}", "not valid JSON"),
        ('{"target_position": 5, "confidence": 0.5}', r"integer in \[-3, 3\]"),
        ('{"target_position": true, "confidence": 0.5}', "integer"),
        ('{"target_position": 1}', "confidence must be a number"),
        ('{"target_position": 1, "confidence": 0.5, "veto": "yes"}', "veto must be true"),
    ]:
        with pytest.raises(AdvisorError, match=message):
            parse_advice(bad, max_position=3)


def test_shipped_llm_config_loads_and_keeps_its_checkpointing_section() -> None:
    config = load_advisor_config(LLM_CONFIG)
    assert config.kind == "rules" and config.consult_every == 1
    assert config.http is not None and config.http.consult_every == 50
    assert config.http.api_key_env == "OPENAI_API_KEY"
    raw = yaml.safe_load(LLM_CONFIG.read_text(encoding="utf-8"))
    assert raw["checkpointing"]["base_interval"] == 10000
    assert isinstance(build_advisor(config), RuleAdvisor)


def write_advisor(tmp_path: Path, section: dict[str, Any]) -> Path:
    path = tmp_path / "llm_config.yaml"
    path.write_text(yaml.safe_dump({"checkpointing": {"x": 1}, "advisor": section}), "utf-8")
    return path


HTTP = {"url": "http://127.0.0.1:9/v1", "model": "m"}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "gpt"}, "advisor.kind must be one of ['rules', 'http'], got 'gpt'"),
        ({"kind": "http"}, "advisor.kind is 'http' but there is no advisor.http section"),
        (
            {"kind": "rules", "temperature": 1},
            "unknown key advisor.temperature; known keys: http, kind, min_confidence, rules",
        ),
        (
            {"kind": "rules", "rules": {"consult_evry": 3}},
            "unknown key advisor.rules.consult_evry (did you mean 'consult_every'?)",
        ),
        (
            {"kind": "rules", "min_confidence": 1.5},
            "advisor.min_confidence must be >= 0 and <= 1, got 1.5",
        ),
        (
            {"kind": "http", "http": {**HTTP, "timeout_seconds": -1}},
            "advisor.http.timeout_seconds must be > 0 and <= 600, got -1.0",
        ),
        (
            {"kind": "http", "http": {**HTTP, "url": "ftp://x"}},
            "advisor.http.url must be an http:// or https:// URL, got 'ftp://x'",
        ),
        (
            {"kind": "http", "http": {**HTTP, "api_key_env": "sk-123"}},
            "advisor.http.api_key_env must be an environment variable name",
        ),
        (
            {"kind": "rules", "rules": {"consult_every": 0}},
            "advisor.rules.consult_every must be >= 1, got 0",
        ),
        ({"kind": "http", "http": {"url": "http://x"}}, "missing key advisor.http.model"),
    ],
)
def test_bad_advisor_config_is_refused(
    tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_advisor_config(write_advisor(tmp_path, section))
    assert message in str(info.value)


# --- the HTTP advisor against a real local server -----------------------------------------


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "good"
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client gave up (timeout test); nothing to report


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body, dict(self.headers)))
        mode = self.server.mode
        if mode == "slow":
            # No answer before the test releases it; the bound only frees the thread if not.
            self.server.release.wait(30.0)
        if mode == "error":
            self.send_error(500, "overloaded")
            return
        advice = {"target_position": 1, "confidence": 0.8, "veto": False, "reason": "trend"}
        content = {
            "good": f"```json\n{json.dumps(advice)}\n```",
            "slow": json.dumps(advice),
            "prose": "I would buy here.",
        }.get(mode)
        if content is None:
            payload = b"<html>garbage</html>"
        else:
            reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
            payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def http_env(url: str, timeout: float = 2.0) -> FuturesTradingEnv:
    config = HttpAdvisorConfig(url=url, model="test-model", timeout_seconds=timeout)
    return phase3(HttpAdvisor(config))


def test_good_replies_steer_the_env_and_the_request_is_openai_shaped(
    llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    env = http_env(llm.url)
    assert positions_after(env, [FLAT, FLAT, FLAT]) == [1, 1, 1]
    counts = env.episode_stats().advisor
    assert counts is not None
    assert (counts.consults, counts.answers, counts.errors, counts.overrides) == (3, 3, 0, 3)
    assert counts.metadata()["llm_confidence_avg"] == pytest.approx(0.8)
    path, body, headers = llm.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "test-model"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = json.loads(body["messages"][1]["content"])
    assert user["proposed_target_position"] == 0
    assert user["state"]["market"] == "HM" and user["state"]["max_position"] == 3
    assert user["state"]["timestamp"] == "2024-01-02T09:00:00"  # the first hand-made bar
    assert headers["Authorization"] == "Bearer test-key"


@pytest.mark.parametrize("mode", ["garbage", "prose", "error"])
def test_bad_replies_are_counted_and_the_rl_action_kept(llm: FakeLLM, mode: str) -> None:
    llm.mode = mode
    env = http_env(llm.url)
    assert positions_after(env, [LONG1, FLAT, SHORT1, SHORT1]) == [1, 0, -1, -1]
    counts = env.episode_stats().advisor
    assert counts is not None and counts.errors == 4 and counts.answers == 0
    assert counts.metadata()["llm_error_count"] == 4.0


def test_timeouts_are_counted_and_stepping_goes_on(llm: FakeLLM) -> None:
    llm.mode = "slow"  # the server answers only once released, after the steps below
    env = http_env(llm.url, timeout=0.2)
    # A client waiting past its timeout would get the (overriding) advice and count answers.
    assert positions_after(env, [LONG1, LONG1, FLAT]) == [1, 1, 0]
    counts = env.episode_stats().advisor
    assert counts is not None
    assert (counts.consults, counts.answers, counts.errors, counts.overrides) == (3, 0, 3, 0)
    llm.release.set()


def test_unreachable_server_is_an_error_not_a_crash() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as closed:
        port = closed.server_address[1]
    env = http_env(f"http://127.0.0.1:{port}/v1", timeout=0.5)
    assert positions_after(env, [LONG1, FLAT]) == [1, 0]
    counts = env.episode_stats().advisor
    assert counts is not None and counts.errors == 2
    with pytest.raises(AdvisorError, match="failed"):
        HttpAdvisor(HttpAdvisorConfig(url=f"http://127.0.0.1:{port}/v1", model="m")).advise(
            env._market_state(), 0
        )
