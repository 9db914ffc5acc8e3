"""Backend URLs are read strictly: a wrong option fails at once, naming itself."""

from __future__ import annotations

import pytest

from budget_ws import InvalidBackendOption, MemoryBackend, UnknownBackend, create_backend
from budget_ws.backends.redis import HistoryPolicy, RedisBackend


@pytest.mark.parametrize(
    ("url", "option", "says"),
    [
        ("memory://?history_sise=5", "history_sise", "known options: history_size, history_ttl"),
        ("memory://?history_size=5&history_size=6", "history_size", "given twice"),
        ("memory://?history_size=", "history_size", "a whole number >= 0"),
        ("memory://?history_size=1.5", "history_size", "a whole number >= 0"),
        ("memory://?history_ttl=0", "history_ttl", "a number of seconds > 0"),
        ("memory://?history_ttl=inf", "history_ttl", "a number of seconds > 0"),
        ("memory://?history_ttl=nan", "history_ttl", "a number of seconds > 0"),
        ("memory://?history_size", "history_size", "not a list of name=value options"),
        ("memory://somewhere/else", "path", "accepts nothing"),
        ("redis://127.0.0.1/0?clustr=1", "clustr", "known options: client_name, cluster"),
        ("redis://127.0.0.1/0?cluster=on-ish", "cluster", "one of 1, true, yes, on, 0, false"),
        ("redis://127.0.0.1/0?reconnect_delay=0", "reconnect_delay", "0 < LOW <= HIGH"),
        ("redis://127.0.0.1/0?reconnect_delay=0,5", "reconnect_delay", "0 < LOW <= HIGH"),
        ("redis://127.0.0.1/0?reconnect_delay=5,1", "reconnect_delay", "0 < LOW <= HIGH"),
        ("redis://127.0.0.1/0?operation_timeout=-1", "operation_timeout", "seconds > 0"),
        ("redis://127.0.0.1/0?health_check_interval=0", "health_check_interval", "seconds > 0"),
        ("redis://127.0.0.1/0?max_connections=0", "max_connections", "a whole number >= 1"),
        ("redis://127.0.0.1/0?key_prefix=", "key_prefix", "a non-empty string"),
        ("redis://127.0.0.1/0?key_prefix=a{b}", "key_prefix", "without { or }"),
        ("redis://127.0.0.1/0?db=1", "db", "nothing when the path names one"),
        ("redis://127.0.0.1/2?cluster=1", "db", "only 0 on a cluster"),
        ("redis://127.0.0.1/zero", "path", "a database number"),
        ("redis://127.0.0.1/0?ssl_cert_reqs=none", "ssl_cert_reqs", "known options"),
        ("rediss://127.0.0.1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs", "one of none, optional"),
        ("redis://127.0.0.1/0?retry_on_timeout=1", "retry_on_timeout", "known options"),
    ],
)
def test_a_bad_option_is_refused_at_once_with_what_it_accepts(
    url: str, option: str, says: str
) -> None:
    with pytest.raises(InvalidBackendOption) as caught:
        create_backend(url)
    assert caught.value.option == option
    assert says in str(caught.value)
    assert isinstance(caught.value, UnknownBackend)  # what earlier releases raised


def test_redis_options_reach_the_backend_and_redis_py() -> None:
    backend = create_backend(
        "rediss://127.0.0.1:6380/3?key_prefix=app&history_size=0&history_ttl=1.5&topic_ttl=60"
        "&cluster=off&operation_timeout=2&health_check_interval=3&reconnect_delay=0.1,2"
        "&max_connections=7&socket_timeout=4&socket_keepalive=yes&client_name=worker-1"
        "&ssl_cert_reqs=required&ssl_check_hostname=true"
    )
    assert isinstance(backend, RedisBackend)
    assert backend.url == "rediss://127.0.0.1:6380/3"
    assert backend.key_prefix == "app"
    assert backend.history_policy == HistoryPolicy(size=0, ttl=1.5)
    assert backend.cluster is False
    assert (backend.topic_ttl, backend.operation_timeout, backend.health_check_interval) == (
        60,
        2,
        3,
    )
    assert backend.reconnect_delay == (0.1, 2)
    assert backend.max_connections == 7
    assert backend._connection_options == {
        "socket_timeout": 4.0,
        "socket_keepalive": True,
        "client_name": "worker-1",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }


@pytest.mark.parametrize("word", ["1", "true", "YES", "On"])
def test_cluster_flags_are_read_in_any_case(word: str) -> None:
    backend = create_backend(f"redis://127.0.0.1:7000/0?cluster={word}")
    assert isinstance(backend, RedisBackend)
    assert backend.cluster is True


def test_constructor_arguments_are_checked_like_url_options() -> None:
    with pytest.raises(InvalidBackendOption, match="history_ttl accepts a number of seconds"):
        MemoryBackend(history_ttl=float("nan"))
    with pytest.raises(InvalidBackendOption, match="history_size accepts a whole number"):
        MemoryBackend(history_size=-1)
    with pytest.raises(InvalidBackendOption, match="health_check_interval"):
        RedisBackend(health_check_interval=float("inf"))
