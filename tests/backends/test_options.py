"""Backend URLs are read strictly: a wrong option fails at once, naming itself."""

from __future__ import annotations

import pytest

from budget_ws import InvalidBackendOption, MemoryBackend, UnknownBackend, create_backend
from budget_ws.backends._redis_url import parse_sentinel_address
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
        ("redis://127.0.0.1/0?wait_replicas=-1", "wait_replicas", "a whole number >= 0"),
        ("redis://127.0.0.1/0?cluster=1&wait_replicas=1", "wait_replicas", "only 0 on a cluster"),
        ("redis+sentinel://h1:26379/", "master_name", "the name the Sentinels monitor"),
        ("redis+sentinel://h1:26379", "master_name", "the name the Sentinels monitor"),
        ("redis+sentinel://h1:26379//0", "master_name", "the name the Sentinels monitor"),
        ("redis+sentinel://h1:26379/mymaster/zero", "path", "/MASTER_NAME or /MASTER_NAME/DB"),
        ("redis+sentinel://h1:26379/mymaster/0/1", "path", "/MASTER_NAME or /MASTER_NAME/DB"),
        ("redis+sentinel:///mymaster", "host", "HOST or HOST:PORT, comma-separated"),
        ("redis+sentinel://h1:26379,/mymaster", "host", "HOST or HOST:PORT"),
        ("redis+sentinel://h1:port/mymaster", "host", "HOST or HOST:PORT"),
        ("redis+sentinel://h1:0/mymaster", "host", "HOST or HOST:PORT"),
        ("redis+sentinel://h1:99999/mymaster", "host", "HOST or HOST:PORT"),
        ("redis+sentinel://h1/mymaster?cluster=1", "cluster", "Sentinel and Cluster exclude"),
        ("redis+sentinel://h1/mymaster?cluster=0", "cluster", "Sentinel and Cluster exclude"),
        ("redis+sentinel://h1/mymaster/1?db=2", "db", "nothing when the path names one"),
        ("redis+sentinel://h1/mymaster?sentinel_timeout=0", "sentinel_timeout", "seconds > 0"),
        ("redis+sentinel://h1/mymaster?sentinel_password=", "sentinel_password", "non-empty"),
        (
            "redis+sentinel://h1/mymaster?sentinel_pasword=x",
            "sentinel_pasword",
            "sentinel_password",
        ),
        (
            "redis+sentinel://h1/m?sentinel_timeout=1&sentinel_timeout=2",
            "sentinel_timeout",
            "twice",
        ),
        ("redis+sentinel://h1/mymaster?ssl_cert_reqs=none", "ssl_cert_reqs", "known options"),
        ("rediss+sentinel://h1/mymaster?ssl_cert_reqs=maybe", "ssl_cert_reqs", "one of none"),
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


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_options() -> None:
    backend = create_backend(
        "redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2,[::1]:26380/my%20master/2"
        "?key_prefix=app&history_size=10&wait_replicas=1&socket_timeout=3"
        "&sentinel_username=watcher&sentinel_password=s%26s&sentinel_timeout=0.5"
    )
    assert isinstance(backend, RedisBackend)
    assert (
        backend.url == "redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2,[::1]:26380/my%20master/2"
    )
    assert backend.cluster is False
    assert backend.wait_replicas == 1
    assert backend.history_policy == HistoryPolicy(size=10)
    assert backend._connection_options == {
        "socket_timeout": 3.0,
        "sentinel_kwargs": {
            "username": "watcher",
            "password": "s&s",
            "socket_timeout": 0.5,
            "socket_connect_timeout": 0.5,
        },
    }
    # No password in the repr: it goes to logs.
    assert repr(backend) == (
        "RedisBackend(redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,[::1]:26380/my master"
        " sentinel, prefix='app')"
    )
    tls = create_backend("rediss+sentinel://h1/mymaster?db=3&ssl_cert_reqs=required")
    assert isinstance(tls, RedisBackend)
    assert tls._connection_options == {"db": 3, "ssl_cert_reqs": "required"}


def test_the_constructor_reads_a_sentinel_url_as_strictly() -> None:
    with pytest.raises(InvalidBackendOption, match="Sentinel and Cluster exclude each other"):
        RedisBackend("redis+sentinel://h1/mymaster", cluster=True)
    with pytest.raises(InvalidBackendOption) as caught:
        RedisBackend("redis+sentinel://h1:26379")
    assert caught.value.option == "master_name"
    with pytest.raises(InvalidBackendOption, match="give the options as arguments"):
        RedisBackend("redis+sentinel://h1/mymaster?history_size=1")
    with pytest.raises(InvalidBackendOption, match="wait_replicas accepts a whole number"):
        RedisBackend(wait_replicas=-1)


def test_a_sentinel_url_gives_the_master_its_credentials_and_database() -> None:
    target = parse_sentinel_address("rediss+sentinel://app:p%40ss@s1,[::1]:26380/main/4")
    assert target.sentinels == (("s1", 26379), ("::1", 26380))
    assert (target.master_name, target.db, target.tls) == ("main", 4, True)
    assert (target.username, target.password) == ("app", "p@ss")
    # The pub/sub connection's URL: the master Sentinel named, the URL's credentials.
    assert target.node_url("::1", 6380) == "rediss://app:p%40ss@[::1]:6380/4"
    plain = parse_sentinel_address("redis+sentinel://:only@s1/main")
    assert (plain.username, plain.password, plain.db) == (None, "only", None)
    assert plain.node_url("10.0.0.9", 6379) == "redis://:only@10.0.0.9:6379"
    nobody = parse_sentinel_address("redis+sentinel://s1/main")
    assert (nobody.username, nobody.password) == (None, None)
