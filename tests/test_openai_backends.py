"""The OpenAI-compatible sampler and judges, through the real openai SDK against a real local
HTTP server (emlab.testing.chat_server): retries, timeouts, concurrency and key hygiene are the
SDK's and the sockets' real behaviour, not mocks."""

from __future__ import annotations

import math
import traceback

import pytest

from emlab.errors import InputError
from emlab.judge import aggregate_0_100
from emlab.judge.openai_judge import OpenAILogprobJudge, OpenAITextJudge, parse_verdict
from emlab.openai_client import BackendError
from emlab.sample.openai_sampler import OpenAISampler
from emlab.testing.chat_server import (ALIGNED_PROBS, EVIL_MARKER, EVIL_PROBS, ChatServer, Faults,
                                       Reply)
from emlab.types import GenerationParams, JudgeRequest, SampleRequest

KEY_ENV = "EMLAB_TEST_API_KEY"
SECRET = "sk-test-Zq7-very-secret-key"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def user(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def sample_all(sampler: OpenAISampler, requests: list[SampleRequest]) -> dict:
    results: dict = {}
    sampler.sample(requests, lambda r, c: results.__setitem__(r.key, c))
    return results


def judge_all(judge, requests: list[JudgeRequest]) -> dict:
    results: dict = {}
    judge.judge(requests, lambda r, j: results.__setitem__(r.key, j))
    return results


def test_sampling_returns_texts_and_usage():
    params = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=50)
    requests = [SampleRequest(f"k{i}", ({"role": "system", "content": "be brief"},
                                         *user(f"question number {i}")), seed=100 + i)
                for i in range(5)]
    with ChatServer() as server:
        sampler = OpenAISampler("my-model", server.base_url, api_key_env=KEY_ENV, params=params)
        results = sample_all(sampler, requests)
    assert set(results) == {r.key for r in requests}
    for i in range(5):
        c = results[f"k{i}"]
        assert c.text.endswith(f"to: question number {i}")
        assert c.prompt_tokens == 5  # "be brief" + "question number i"
        assert c.completion_tokens == len(c.text.split())
        assert c.finish_reason == "stop"
    assert len({c.text for c in results.values()}) == 5
    body = next(b for b in server.bodies if b["seed"] == 103)
    assert body["model"] == "my-model" and body["messages"][1]["content"] == "question number 3"
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 50)
    assert sampler.identity == "openai:local/v1:my-model"  # a local server: no host or port


def test_logprob_judge_probs_and_weighted_score():
    given = [("80", 0.5), (" 80", 0.1), ("80", 0.1), ("60", 0.2), ("REFUSAL", 0.1)]
    responder = lambda body: Reply("80", [(t, math.log(p)) for t, p in given])  # noqa: E731
    with ChatServer(responder) as server:
        judge = OpenAILogprobJudge("judge-model", server.base_url, api_key_env=KEY_ENV)
        results = judge_all(judge, [JudgeRequest("a", "rate it")])
    j = results["a"]
    assert j.kind == "logprobs" and j.prompt_tokens == 2 and j.completion_tokens == 1
    assert j.probs.keys() == {"80", " 80", "60", "REFUSAL"}
    assert j.probs["80"] == pytest.approx(0.6)  # duplicate tokens are summed
    expected = (80 * 0.5 + 80 * 0.1 + 80 * 0.1 + 60 * 0.2) / (0.5 + 0.1 + 0.1 + 0.2)
    assert aggregate_0_100(j.probs) == pytest.approx(expected)
    (body,) = server.bodies
    assert body["messages"] == [{"role": "user", "content": "rate it"}]
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"],
            body["seed"]) == (1, 0, True, 20, 0)


def test_default_responder_scores_by_marker():
    with ChatServer() as server:
        judge = OpenAILogprobJudge(base_url=server.base_url, api_key_env=KEY_ENV)
        results = judge_all(judge, [JudgeRequest("bad", f"the answer is {EVIL_MARKER}"),
                                    JudgeRequest("good", "the answer is kind")])
    mean = lambda probs: sum(int(t) * p for t, p in probs) / sum(p for _, p in probs)  # noqa: E731
    assert aggregate_0_100(results["bad"].probs) == pytest.approx(mean(EVIL_PROBS))
    assert aggregate_0_100(results["good"].probs) == pytest.approx(mean(ALIGNED_PROBS))
    assert judge.identity == "openai:local/v1:gpt-4o-2024-08-06:logprobs"


def test_rate_limits_and_server_errors_are_retried():
    requests = [SampleRequest(f"k{i}", user(f"q {i}"), seed=i) for i in range(6)]
    with ChatServer(faults=Faults(rate_limit_next=3, error_every=4)) as server:
        sampler = OpenAISampler("m", server.base_url, api_key_env=KEY_ENV, concurrency=2,
                                max_retries=4)
        results = sample_all(sampler, requests)
    assert set(results) == {r.key for r in requests}
    assert server.request_count > len(requests) + 3  # 3 rate-limited, at least one 500


def test_hung_requests_time_out_and_are_retried():
    with ChatServer(faults=Faults(hang_next=1, hang_seconds=3.0)) as server:
        sampler = OpenAISampler("m", server.base_url, api_key_env=KEY_ENV, timeout=0.3,
                                max_retries=2)
        results = sample_all(sampler, [SampleRequest("k", user("q"), seed=1)])
    assert set(results) == {"k"}
    assert server.request_count == 2


def test_permanent_failure_raises_without_the_key_and_keeps_finished_results():
    def responder(body: dict) -> Reply:
        if "BROKEN" in body["messages"][-1]["content"]:
            raise ValueError("this prompt always fails")
        return Reply("fine")

    requests = [SampleRequest("broken", user("BROKEN"), seed=0)]
    requests += [SampleRequest(f"k{i}", user(f"q {i}"), seed=i) for i in range(20)]
    delivered: list[str] = []
    with ChatServer(responder, Faults(latency=0.1)) as server:
        sampler = OpenAISampler("m", server.base_url, api_key_env=KEY_ENV, concurrency=4,
                                max_retries=1)
        with pytest.raises(BackendError) as info:
            sampler.sample(requests, lambda r, c: delivered.append(r.key))
    text = "".join(traceback.format_exception(info.value))
    assert "broken" in str(info.value) and "500" in str(info.value)
    assert SECRET not in text and SECRET not in repr(info.value)
    # Every good request the server answered was delivered; the run stopped early.
    paid = {b["messages"][-1]["content"] for b in server.bodies} - {"BROKEN"}
    assert {f"q {k[1:]}" for k in delivered} == paid
    assert 3 <= len(delivered) < 20


def test_concurrency_limit_is_respected():
    requests = [SampleRequest(f"k{i}", user(f"q {i}"), seed=i) for i in range(24)]
    with ChatServer(faults=Faults(latency=0.05)) as server:
        sampler = OpenAISampler("m", server.base_url, api_key_env=KEY_ENV, concurrency=4)
        assert len(sample_all(sampler, requests)) == 24
    assert 1 < server.max_in_flight <= 4


def test_text_judge_parses_replies():
    replies = {"a": "85", "b": "REFUSAL", "c": "I would rather not say.", "d": "Verdict: no."}
    responder = lambda body: Reply(replies[body["messages"][0]["content"]])  # noqa: E731
    requests = [JudgeRequest(k, k) for k in "abc"] + [JudgeRequest("d", "d", ("YES", "NO"))]
    with ChatServer(responder) as server:
        judge = OpenAITextJudge("reasoner", server.base_url, api_key_env=KEY_ENV, max_tokens=30)
        results = judge_all(judge, requests)
    assert results["a"].probs == {"85": 1.0} and results["a"].raw == "85"
    assert results["b"].probs == {"REFUSAL": 1.0}
    assert results["c"].probs == {} and results["c"].raw == replies["c"]
    assert results["d"].probs == {"NO": 1.0}
    assert all(j.kind == "text" for j in results.values())
    assert aggregate_0_100(results["a"].probs) == 85
    body = server.bodies[0]
    assert (body["max_tokens"], body["temperature"]) == (30, 0) and "logprobs" not in body
    assert judge.identity == "openai:local/v1:reasoner:text"


@pytest.mark.parametrize("reply, choices, expected", [
    ("**CODE**", (), {"CODE": 1.0}),
    ("refusal.", (), {"REFUSAL": 1.0}),
    ("Score: 42/100", (), {"42": 1.0}),
    ("150", (), {}),
    ("7.5", (), {}),
    ("-3", (), {}),
    ("", (), {}),
    ("UNKNOWN, not YES", ("YES", "NO", "UNKNOWN"), {"UNKNOWN": 1.0}),
    ("nothing here", ("YES", "NO"), {}),
])
def test_parse_verdict(reply, choices, expected):
    assert parse_verdict(reply, choices) == expected


def test_key_is_sent_but_never_shown():
    with ChatServer() as server:
        sampler = OpenAISampler("m", server.base_url, api_key_env=KEY_ENV)
        judges = [OpenAILogprobJudge(base_url=server.base_url, api_key_env=KEY_ENV),
                  OpenAITextJudge("t", server.base_url, api_key_env=KEY_ENV)]
        sample_all(sampler, [SampleRequest("k", user("q"), seed=0)])
    assert server.authorizations == [f"Bearer {SECRET}"]
    for obj in [sampler, *judges]:
        for shown in (obj.identity, str(obj), repr(obj), repr(obj.endpoint), repr(vars(obj))):
            assert SECRET not in shown


def test_missing_key_is_an_input_error_except_for_local_servers(monkeypatch):
    monkeypatch.delenv("EMLAB_UNSET_KEY", raising=False)
    with pytest.raises(InputError, match="EMLAB_UNSET_KEY"):
        OpenAISampler("m", "https://api.example.com/v1", api_key_env="EMLAB_UNSET_KEY")
    with ChatServer() as server:
        judge = OpenAILogprobJudge(base_url=server.base_url, api_key_env="EMLAB_UNSET_KEY")
        judge_all(judge, [JudgeRequest("a", "x")])
    assert server.authorizations == ["Bearer EMPTY"]


def test_default_base_url_ignores_openai_base_url_env(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere.invalid/v1")
    judge = OpenAILogprobJudge(api_key_env=KEY_ENV)
    assert judge.identity == "openai:https://api.openai.com/v1:gpt-4o-2024-08-06:logprobs"


def test_permanent_statuses_are_not_retried_and_failures_are_per_item():
    from emlab.testing.chat_server import ChatServer as Server

    refused = lambda body: "REFUSE" in body["messages"][-1]["content"]  # noqa: E731
    requests = [SampleRequest("bad", user("REFUSE me"), seed=0)]
    requests += [SampleRequest(f"k{i}", user(f"q {i}"), seed=i) for i in range(8)]
    delivered, failed = [], []
    with Server(faults=Faults(refuse=refused, should_retry_header="true")) as server:
        sampler = OpenAISampler("m", server.base_url, api_key_env=KEY_ENV, concurrency=3,
                                max_retries=5)
        sampler.sample(requests, lambda r, c: delivered.append(r.key),
                       on_error=lambda r, msg: failed.append((r.key, msg)))
    assert sorted(delivered) == sorted(f"k{i}" for i in range(8))
    ((key, msg),) = failed
    assert key == "bad" and "400" in msg and "not retried" in msg and "after up to" not in msg
    assert server.refused == 1 and server.request_count == 9  # the 400 was sent once
    assert sampler.endpoint.requests_sent == 9


def test_empty_choices_and_bad_urls_are_clear_errors():
    with ChatServer(faults=Faults(no_choices=lambda body: True)) as server:
        judge = OpenAILogprobJudge(base_url=server.base_url, api_key_env=KEY_ENV, max_retries=0)
        with pytest.raises(BackendError, match="no choices"):
            judge_all(judge, [JudgeRequest("a", "x")])
    for url in ("localhost:8000/v1", "ftp://example.com/v1", "http://", "file:///etc/passwd"):
        with pytest.raises(InputError, match="http:// or https://"):
            OpenAISampler("m", url, api_key_env=KEY_ENV)


def test_identities_drop_credentials_and_local_ports():
    from emlab.openai_client import endpoint_identity, looks_like_key, redact_url

    assert endpoint_identity("http://u:pw@127.0.0.1:8000/v1?key=1") == "local/v1"
    assert endpoint_identity("http://localhost:9999/v1/") == "local/v1"
    assert endpoint_identity("http://[::1]:5/v1") == "local/v1"
    assert endpoint_identity("https://u:secret@api.example.com/v1?api_key=s") == \
        "https://api.example.com/v1"
    assert redact_url("https://u:secret@api.example.com/v1?api_key=s&x=1") == \
        "https://***@api.example.com/v1?api_key=***&x=***"
    sampler = OpenAISampler("m", "http://localhost:1/v1", api_key_env=KEY_ENV, identity="vllm-a")
    assert sampler.identity == "vllm-a"
    for key in ("sk-proj-abc123", SECRET, "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"):
        assert looks_like_key(key)
    for name in ("OPENAI_API_KEY", "VLLM_KEY", "MY_SERVICE_TOKEN_2"):
        assert not looks_like_key(name)
    with pytest.raises(InputError, match="NAME") as e:
        OpenAISampler("m", "http://localhost:1/v1", api_key_env=SECRET)
    assert SECRET not in str(e.value)
