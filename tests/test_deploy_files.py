"""The files that deploy the agent say what the README says they do.

No Docker engine runs here, so the image and compose file cannot be started;
these checks hold them to their promises instead: a non-root user, a health
check on /healthz, the one way to run the server, two instances sharing Redis
and PostgreSQL, and a stop grace longer than the drain; every extra a documented
variable needs, a volume for /app/data, a build context without secrets, a compose
file Compose v1 accepts, and an example.env that says what must be filled. The
haproxy config itself is exercised for real in test_many_instances.py, test_moves.py and
test_deploy_proxy.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from telephony.settings import Settings, SettingsError
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


def _image_extras() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    return set(re.search(r'pip install "\.\[([\w,]+)\]"', text).group(1).split(","))


def test_the_image_has_every_extra_a_documented_variable_switches_on():
    # OTEL_EXPORTER_OTLP_ENDPOINT without opentelemetry stops the server at start-up.
    assert {"redis", "postgres", "otel"} <= _image_extras()


def test_the_image_keeps_its_data_in_a_volume_that_compose_mounts():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^VOLUME \["/app/data"\]$', dockerfile, re.M)
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    agent = re.search(r"^x-agent: &agent\n(.*?)\n\S", compose, re.S | re.M).group(1)
    assert re.search(r"^    - (\w+):/app/data$", agent, re.M), "the agents do not mount a volume on /app/data"
    named = re.search(r"^    - (\w+):/app/data$", agent, re.M).group(1)
    assert re.search(rf"^volumes:\n(?:  \w+:\n)*  {named}:$", compose, re.M)


def test_the_build_context_leaves_out_secrets_history_and_what_the_image_does_not_run():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", "tests", "benchmarks", "data", "deploy", ".env", "*.env"} <= ignored
    assert not any(line.startswith("!") for line in ignored), "an exception could let deploy/.env back in"
    copied = re.findall(r"^COPY (\S+(?: \S+)*) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for path in (p for source in copied for p in source.split()):
        assert path not in ignored, f"the image copies {path}, which .dockerignore leaves out"


def test_compose_v1_accepts_the_file():
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    assert not re.search(r"^name:", text, re.M), "Compose v1 refuses a top-level name:"
    assert not re.search(r"^version:", text, re.M), "no version: the file is the Compose specification"
    compose_v1 = shutil.which("docker-compose")
    if compose_v1 is None:
        pytest.skip("docker-compose (v1) is not installed: only the static checks ran")
    env = ROOT / "deploy" / ".env"
    made = not env.exists()
    if made:
        env.write_text((ROOT / "deploy" / "example.env").read_text())
    try:
        run = subprocess.run([compose_v1, "-f", str(ROOT / "deploy" / "compose.yaml"), "config", "-q"],
                             capture_output=True, text=True, timeout=60)
    finally:
        if made:
            env.unlink()
    assert run.returncode == 0, run.stderr


def _example_env() -> tuple[dict[str, str], set[str]]:
    values: dict[str, str] = {}
    required: set[str] = set()
    marked = False
    for line in (ROOT / "deploy" / "example.env").read_text().splitlines():
        if line.startswith("# REQUIRED"):
            marked = True
        elif line.startswith("#"):
            continue
        elif "=" in line:
            name, _, value = line.partition("=")
            values[name] = value
            if marked:
                required.add(name)
        else:
            marked = False
    return values, required


def _compose_environment() -> dict[str, str]:
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    block = re.search(r"^  environment:\n((?:    .*\n)+)", compose, re.M).group(1)
    return {m.group(1): m.group(2).strip('"') for m in re.finditer(r"^    (\w+): (.+)$", block, re.M)}


def test_example_env_names_what_must_be_filled_and_the_instances_start_with_exactly_that():
    values, required = _example_env()
    assert required == {"GEMINI_API_KEY", "PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"}
    assert all(values[name] == "" for name in values), "example.env holds no value a user could forget to change"
    environ = {**values, **_compose_environment()}
    assert environ["REQUIRE_TWILIO_SIGNATURE"] == "true"
    filled = {"GEMINI_API_KEY": "AIza-example", "PUBLIC_URL": "https://agent.example.com",
              "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "0123456789abcdef" * 2}
    settings = Settings.from_env({**environ, **filled})
    assert settings.twilio_auth_token and settings.public_url == "https://agent.example.com"


def test_the_gemini_key_alone_is_refused_with_one_line_naming_the_twilio_token():
    values, _ = _example_env()
    with pytest.raises(SettingsError, match="TWILIO_AUTH_TOKEN is not set"):
        Settings.from_env({**values, **_compose_environment(), "GEMINI_API_KEY": "AIza-example"})
