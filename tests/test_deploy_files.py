"""The files that deploy the agent say what the README says they do.

No Docker engine runs here, so the image and compose file cannot be started;
these checks hold them to their promises instead: a non-root user, a health
check on /healthz, the one way to run the server, two instances sharing Redis
and PostgreSQL, and a stop grace longer than the drain. The haproxy config itself
is exercised for real in test_many_instances.py, test_moves.py and test_deploy_proxy.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from telephony.testing.proxy import HAPROXY_CONFIG, haproxy_loopback_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_procfile_runs_telephony_serve():
    assert (ROOT / "Procfile").read_text().strip() == "web: telephony serve --host 0.0.0.0 --port $PORT"


def test_the_image_runs_telephony_serve_as_a_non_root_user_with_a_health_check():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert "telephony serve --host 0.0.0.0 --port ${PORT}" in text
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"the image copies {path}, which is not in the repository"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = re.search(r'pip install "\.\[([\w,]+)\]"', text).group(1).split(",")
    assert set(wanted) <= set(extras), "the image installs extras the package does not define"


def test_compose_runs_two_instances_sharing_redis_and_postgresql_behind_the_proxy():
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    assert re.search(r"^  agent-a: \*agent$", text, re.M) and re.search(r"^  agent-b: \*agent$", text, re.M)
    assert "REDIS_URL: redis://redis:6379/0" in text and "DATABASE_URL: postgresql://" in text
    for service in ("redis", "postgres", "proxy"):
        assert re.search(rf"^  {service}:$", text, re.M)
    grace = int(re.search(r"stop_grace_period: (\d+)s", text).group(1))
    assert grace > 30, "the grace period must outlast the default drain (DRAIN_TIMEOUT_SECONDS=30)"


def test_the_proxy_has_no_session_affinity_checks_health_and_keeps_websockets_open_for_an_hour():
    text = HAPROXY_CONFIG.read_text()
    assert not re.search(r"\b(stick|cookie|balance source|hash-type)\b", text)
    for backend in ("streams", "agents"):
        block = re.search(rf"^backend {backend}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M).group(1)
        assert block.count("server agent-") == 2 and "balance roundrobin" in block
        assert "option httpchk GET /healthz" in block and "init-addr none" in block and "resolvers dns" in block
    assert "use_backend streams if { path /media-stream }" in text
    assert int(re.search(r"timeout tunnel (\d+)s", text).group(1)) >= 3600
    assert re.search(r"timeout connect 1s", text) and "option redispatch" in text and "retry-on" in text
    loopback = haproxy_loopback_config(text, {"agent-a": 1, "agent-b": 2}, 9, 53)
    assert "server agent-a agent-a:1" in loopback and "bind 127.0.0.1:9" in loopback
    assert "nameserver standin 127.0.0.1:53" in loopback
