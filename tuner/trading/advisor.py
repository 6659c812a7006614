"""Phase-3 advisors: a rule-based one built in, an OpenAI-compatible HTTP one optional.

An advisor sees the market state and the RL policy's proposed target position and returns an
:class:`Advice` (a target position or none, a confidence, a veto flag), or ``None`` to
abstain. :class:`tuner.trading.env.FuturesTradingEnv` consults it every ``consult_every`` steps in
phase 3, lets confident advice override the RL action, applies confident vetoes (no new or
larger positions; exits stay allowed) and counts everything in :class:`AdvisorCounters`,
whose :meth:`AdvisorCounters.metadata` gives the phase-3 checkpoint metadata fields.

Settings live in the ``advisor:`` section of ``config/llm_config.yaml``
(:func:`load_advisor_config`). An advisor that raises, times out or answers garbage is
counted as an error and the RL action is used: training never stops because of an advisor.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import math
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from checkpointing.config import KNOWN_LLM_FIELDS
from checkpointing.errors import ConfigError
from checkpointing.validation import Section, read_yaml

if TYPE_CHECKING:  # numpy only in annotations: validating the advisor config stays light
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "ADVISOR_METADATA_FIELDS",
    "Advice",
    "Advisor",
    "AdvisorConfig",
    "AdvisorCounters",
    "AdvisorError",
    "HttpAdvisor",
    "HttpAdvisorConfig",
    "MarketState",
    "RuleAdvisor",
    "RuleAdvisorConfig",
    "build_advisor",
    "load_advisor_config",
    "parse_advice",
    "parse_advisor_config",
]

log = logging.getLogger(__name__)

#: The seed note's phase-3 metadata fields, in its order.
ADVISOR_METADATA_FIELDS = KNOWN_LLM_FIELDS
_MAX_REPLY_BYTES = 1 << 20


@functools.cache
def _feature_index(names: tuple[str, ...], name: str) -> int:
    return names.index(name)


class AdvisorError(RuntimeError):
    """An advisor could not give advice (timeout, connection error, malformed reply)."""


@dataclass(frozen=True, eq=False)
class MarketState:
    """What an advisor sees at one step.

    Attributes:
        market: Market name.
        timestamp: Time of the bar that just closed.
        close: Its close price.
        atr: Average true range in price units.
        features: The market features of the observation (past bars only).
        feature_names: Their names.
        position: Current position in contracts (negative = short).
        max_position: Largest allowed ``|target position|`` in this phase.
        unrealized_pnl: Dollars of the open position at the close.
        equity: Account equity in dollars.
        drawdown: Fall of equity from its episode peak, as a fraction (>= 0).
    """

    market: str
    timestamp: np.datetime64
    close: float
    atr: float
    features: NDArray[np.float32]
    feature_names: tuple[str, ...]
    position: int
    max_position: int
    unrealized_pnl: float
    equity: float
    drawdown: float

    def feature(self, name: str) -> float:
        """Value of feature ``name``."""
        return float(self.features[_feature_index(self.feature_names, name)])

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (used in the HTTP advisor's prompt)."""
        return {
            "market": self.market,
            "timestamp": str(self.timestamp.astype("datetime64[s]")),
            "close": self.close,
            "atr": round(self.atr, 6),
            "features": {
                name: round(float(value), 4)
                for name, value in zip(self.feature_names, self.features, strict=True)
            },
            "position": self.position,
            "max_position": self.max_position,
            "unrealized_pnl": round(self.unrealized_pnl, 2),
            "equity": round(self.equity, 2),
            "drawdown": round(self.drawdown, 6),
        }


@dataclass(frozen=True)
class Advice:
    """An advisor's answer.

    Attributes:
        target_position: Suggested target position in contracts, or ``None`` for no opinion.
        confidence: In ``[0, 1]``; advice below the configured minimum is ignored.
        veto: Block new or larger positions at this step (exits stay allowed).
        reason: Free text, for logs.
    """

    target_position: int | None
    confidence: float
    veto: bool = False
    reason: str = ""


@runtime_checkable
class Advisor(Protocol):
    """Anything with an ``advise`` method can advise the phase-3 policy."""

    def advise(self, state: MarketState, rl_target: int) -> Advice | None:
        """Return advice on the RL policy's proposed target position, or ``None`` to abstain.

        May raise: the environment counts the error and keeps the RL action.
        """
        ...


@dataclass
class AdvisorCounters:
    """Running counts of one episode's advisor use (mutable; the env updates it in place).

    Attributes:
        steps: Environment steps.
        consults: Steps on which the advisor was asked.
        answers: Valid advice received (abstentions and errors excluded).
        confidence_sum: Sum of the confidences of the answers.
        action_advices: Answers that named a target position.
        agreements: Of those, answers equal to the RL target.
        errors: Exceptions, timeouts and invalid advice.
        overrides: Steps where confident advice replaced the RL target.
        vetoes: Steps where a confident veto changed the target.
    """

    steps: int = 0
    consults: int = 0
    answers: int = 0
    confidence_sum: float = 0.0
    action_advices: int = 0
    agreements: int = 0
    errors: int = 0
    overrides: int = 0
    vetoes: int = 0

    def __add__(self, other: AdvisorCounters) -> AdvisorCounters:
        return AdvisorCounters(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def metadata(self) -> dict[str, float]:
        """The six phase-3 metadata fields.

        ``reasoning_usage_rate`` is consults per step; ``llm_confidence_avg`` the mean
        confidence of valid answers (NaN without any); ``rl_llm_agreement_rate`` the share of
        answers naming a target that agree with the RL target (NaN without any); the three
        counts are totals.
        """
        return {
            "reasoning_usage_rate": self.consults / self.steps if self.steps else math.nan,
            "llm_confidence_avg": self.confidence_sum / self.answers if self.answers else math.nan,
            "rl_llm_agreement_rate": (
                self.agreements / self.action_advices if self.action_advices else math.nan
            ),
            "llm_error_count": float(self.errors),
            "fusion_override_count": float(self.overrides),
            "risk_veto_count": float(self.vetoes),
        }


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleAdvisorConfig:
    """Settings of :class:`RuleAdvisor` (see its docstring)."""

    consult_every: int = 1
    trend_threshold: float = 1.5
    max_drawdown: float = 0.05
    volatility_spike: float = 2.0


@dataclass(frozen=True)
class HttpAdvisorConfig:
    """Settings of :class:`HttpAdvisor`.

    Attributes:
        url: Base URL of an OpenAI-compatible API (``.../v1``); ``/chat/completions`` is added.
        model: Model name sent in the request.
        timeout_seconds: Per-request timeout.
        api_key_env: Name of the environment variable holding the API key (may be unset
            for local servers); the key itself never goes in a config file.
        temperature: Sampling temperature.
        max_tokens: Reply length limit.
        consult_every: Ask every N environment steps.
    """

    url: str
    model: str
    timeout_seconds: float = 2.0
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 200
    consult_every: int = 50


@dataclass(frozen=True)
class AdvisorConfig:
    """The ``advisor:`` section of ``config/llm_config.yaml``.

    Attributes:
        kind: ``"rules"`` (built in) or ``"http"`` (OpenAI-compatible server).
        min_confidence: Advice (override or veto) below this confidence is ignored.
        rules: Rule-based advisor settings.
        http: HTTP advisor settings (required when ``kind == "http"``).
    """

    kind: Literal["rules", "http"] = "rules"
    min_confidence: float = 0.6
    rules: RuleAdvisorConfig = RuleAdvisorConfig()
    http: HttpAdvisorConfig | None = None

    @property
    def consult_every(self) -> int:
        """Consult interval (steps) of the selected advisor."""
        if self.kind == "http" and self.http is not None:
            return self.http.consult_every
        return self.rules.consult_every


def load_advisor_config(path: str | os.PathLike[str]) -> AdvisorConfig:
    """Load the ``advisor:`` section of an LLM config file (other sections are ignored).

    Raises:
        ConfigError: if the file cannot be read, the section is missing, or a value is
            invalid (the message starts with the file and names the key path, e.g.
            ``advisor.http.timeout_seconds``).
    """
    file = Path(path)
    doc = read_yaml(file)
    try:
        top = Section(doc, "<top level>")
        return parse_advisor_config(top.raw("advisor"))
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(file)}: {exc}") from None


def parse_advisor_config(raw: object, where: str = "advisor") -> AdvisorConfig:
    """Validate an ``advisor`` mapping (see :func:`load_advisor_config`)."""
    sec = Section(raw, where)
    sec.only("kind", "min_confidence", "rules", "http")
    kind = sec.one_of("kind", ("rules", "http"))
    d = AdvisorConfig()
    min_confidence = sec.get_float("min_confidence", d.min_confidence, ge=0.0, le=1.0)
    rules = _parse_rules(sec.section("rules")) if sec.has("rules") else d.rules
    http = _parse_http(sec.section("http")) if sec.has("http") else None
    if kind == "http" and http is None:
        raise ConfigError(
            f"{sec.where('kind')} is 'http' but there is no {sec.where('http')} section"
        )
    return AdvisorConfig(
        kind="http" if kind == "http" else "rules",
        min_confidence=min_confidence,
        rules=rules,
        http=http,
    )


def _parse_rules(sec: Section) -> RuleAdvisorConfig:
    d = RuleAdvisorConfig()
    out = RuleAdvisorConfig(
        consult_every=sec.get_int("consult_every", d.consult_every, ge=1),
        trend_threshold=sec.get_float("trend_threshold", d.trend_threshold, gt=0.0),
        max_drawdown=sec.get_float("max_drawdown", d.max_drawdown, gt=0.0, le=1.0),
        volatility_spike=sec.get_float("volatility_spike", d.volatility_spike, gt=1.0),
    )
    sec.done()
    return out


def _parse_http(sec: Section) -> HttpAdvisorConfig:
    sec.only(*(f.name for f in fields(HttpAdvisorConfig)))
    url = sec.get_str("url").rstrip("/")
    if not re.match(r"^https?://[^\s/]+", url):
        raise ConfigError(
            f"{sec.where('url')} must be an http:// or https:// URL, got {sec.data['url']!r}"
        )
    api_key_env = sec.get_str("api_key_env", "OPENAI_API_KEY")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
        raise ConfigError(
            f"{sec.where('api_key_env')} must be an environment variable name (not the key "
            f"itself), got {api_key_env!r}"
        )
    d = HttpAdvisorConfig(url="", model="")
    return HttpAdvisorConfig(
        url=url,
        model=sec.get_str("model"),
        timeout_seconds=sec.get_float("timeout_seconds", d.timeout_seconds, gt=0.0, le=600.0),
        api_key_env=api_key_env,
        temperature=sec.get_float("temperature", d.temperature, ge=0.0, le=2.0),
        max_tokens=sec.get_int("max_tokens", d.max_tokens, ge=1),
        consult_every=sec.get_int("consult_every", d.consult_every, ge=1),
    )


def build_advisor(config: AdvisorConfig) -> Advisor:
    """Create the advisor selected by ``config.kind``."""
    if config.kind == "http":
        if config.http is None:  # parse_advisor_config refuses this; dataclasses can be built
            raise ConfigError("advisor.kind is 'http' but advisor.http is not set")
        return HttpAdvisor(config.http)
    return RuleAdvisor(config.rules)


# --- the rule-based advisor ---------------------------------------------------------------


class RuleAdvisor:
    """Trend-following suggestion plus a risk veto.

    * Trend: the mean of ``ret_16`` and ``ret_64`` (returns in volatility units) beyond
      ``trend_threshold`` suggests a position on its side, of the RL policy's size (at least
      1 contract), with confidence ``min(1, |score| / (2 * trend_threshold))``.
    * Risk veto (confidence 1): the episode drawdown exceeds ``max_drawdown``, or short-term
      volatility exceeds ``volatility_spike`` times the long-term one.
    * Otherwise it abstains (returns ``None``).
    """

    def __init__(self, config: RuleAdvisorConfig | None = None) -> None:
        self.config = config or RuleAdvisorConfig()
        self._log_spike = math.log(self.config.volatility_spike)

    def advise(self, state: MarketState, rl_target: int) -> Advice | None:
        """See :class:`Advisor`."""
        cfg = self.config
        if state.drawdown > cfg.max_drawdown:
            return Advice(None, 1.0, veto=True, reason=f"drawdown {state.drawdown:.1%}")
        if state.feature("vol_ratio") > self._log_spike:
            return Advice(None, 1.0, veto=True, reason="volatility spike")
        score = 0.5 * (state.feature("ret_16") + state.feature("ret_64"))
        if abs(score) < cfg.trend_threshold:
            return None
        size = min(max(1, abs(rl_target)), state.max_position)
        side = 1 if score > 0 else -1
        confidence = min(1.0, abs(score) / (2.0 * cfg.trend_threshold))
        return Advice(side * size, confidence, reason=f"trend score {score:+.2f}")


# --- the HTTP advisor ---------------------------------------------------------------------

_SYSTEM_PROMPT = (
    "You advise a futures trading policy. You receive the market state (features are "
    "computed from past bars only; returns are in units of recent volatility) and the "
    "policy's proposed target position in contracts (negative = short). Answer with one "
    'JSON object and nothing else: {"target_position": <integer in [-max_position, '
    'max_position]> or null for no opinion, "confidence": <number in [0, 1]>, "veto": '
    '<true to block new or larger positions now>, "reason": <short string>}.'
)


def parse_advice(content: str, max_position: int) -> Advice:
    """Parse an advisor's reply text (a JSON object, possibly in a code fence).

    Raises:
        AdvisorError: if there is no JSON object or a field has the wrong type or range.
    """
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end < start:
        raise AdvisorError(f"reply has no JSON object: {content[:200]!r}")
    try:
        obj = json.loads(content[start : end + 1])
    except json.JSONDecodeError as exc:
        raise AdvisorError(f"reply is not valid JSON ({exc}): {content[:200]!r}") from None
    if not isinstance(obj, dict):
        raise AdvisorError(f"reply JSON must be an object, got {obj!r}")
    target = obj.get("target_position")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int) or abs(target) > max_position
    ):
        raise AdvisorError(
            f"target_position must be an integer in [-{max_position}, {max_position}] or "
            f"null, got {target!r}"
        )
    confidence = obj.get("confidence")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0.0 <= confidence <= 1.0
    ):
        raise AdvisorError(f"confidence must be a number in [0, 1], got {confidence!r}")
    veto = obj.get("veto", False)
    if not isinstance(veto, bool):
        raise AdvisorError(f"veto must be true or false, got {veto!r}")
    reason = obj.get("reason", "")
    return Advice(target, float(confidence), veto=veto, reason=str(reason)[:500])


class HttpAdvisor:
    """Asks an OpenAI-compatible chat-completions endpoint (standard library only).

    Sends ``POST {url}/chat/completions`` with ``model``, a system prompt and the state as
    JSON; reads the JSON advice from ``choices[0].message.content``. The API key, if any, is
    read from the environment variable named in the config at construction time.
    """

    def __init__(self, config: HttpAdvisorConfig) -> None:
        self.config = config
        self.endpoint = f"{config.url.rstrip('/')}/chat/completions"
        self._api_key = os.environ.get(config.api_key_env, "")

    def advise(self, state: MarketState, rl_target: int) -> Advice | None:
        """See :class:`Advisor`.

        Raises:
            AdvisorError: on timeouts, connection or HTTP errors and malformed replies.
        """
        cfg = self.config
        user = {"state": state.summary(), "proposed_target_position": rl_target}
        body = {
            "model": cfg.model,
            "messages": [
                {"role": "system", "content": _SYSTEM_PROMPT},
                {"role": "user", "content": json.dumps(user)},
            ],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_seconds) as response:
                payload = response.read(_MAX_REPLY_BYTES)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise AdvisorError(f"{self.endpoint} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdvisorError(f"{self.endpoint} failed: {reason}") from None
        return self._parse_reply(payload, state.max_position)

    def _parse_reply(self, payload: bytes, max_position: int) -> Advice:
        try:
            reply = json.loads(payload)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AdvisorError(
                f"{self.endpoint} reply is not a chat completion: {payload[:200]!r}"
            ) from None
        if not isinstance(content, str):
            raise AdvisorError(f"{self.endpoint} reply content is not text: {content!r}")
        return parse_advice(content, max_position)
