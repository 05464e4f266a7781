"""The deployment files' settings: valid, and their HTTP API reachable where they publish it.

The compose file and the Helm chart carry their own settings.toml. Neither
can be started here (no container engine or cluster), so their settings are
checked as radnode itself would read them: the compose file's inline
settings, and the chart's config map rendered from the chart's default
values.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from node.settings import Settings, parse_settings
from pipelines.registry import default_registry

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CHART = DEPLOY / "helm" / "radnode"


def _settings(text: str, source: str) -> Settings:
    return parse_settings(tomllib.loads(text), source=source, registry=default_registry())


def test_compose_settings_are_valid_and_publish_the_http_api() -> None:
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    settings = _settings(compose["configs"]["radnode-settings"]["content"], "compose.yaml")
    ports = compose["services"]["radnode"]["ports"]
    # Published on the host's loopback interface only; inside the container
    # the API must listen on the container's address for that to reach it.
    assert f"127.0.0.1:{settings.node.http_port}:{settings.node.http_port}" in ports
    assert settings.node.http_host == "0.0.0.0"
    assert f"{settings.node.port}:{settings.node.port}" in ports


def _value(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        node = node[key]
    return node


def render_chart_settings(values: dict[str, Any]) -> str:
    """The settings.toml of the chart's config map, for ``values`` without a signing Secret.

    Renders the few template forms the config map uses; anything else left
    in the text fails the test.
    """
    template = (CHART / "templates" / "configmap.yaml").read_text()
    block = template.split("settings.toml: |\n", 1)[1]
    text = "\n".join(line[4:] for line in block.splitlines())
    # No signing Secret in the default values: the conditional lines go.
    signing = r"\n *\{\{- if include \"radnode.signingSecret\" \. \}\}.*?\{\{- end \}\}"
    text = re.sub(signing, "", text, flags=re.S)

    def expression(match: re.Match[str]) -> str:
        path, *filters = (part.strip() for part in match.group(1).split("|"))
        value = _value(values, path.removeprefix(".Values."))
        for name in filters:
            if name == "quote":
                value = '"' + str(value) + '"'
            elif name == "int":
                value = str(int(value))
            elif name == "default list":
                value = value or []
            elif name == "toJson":
                value = str(value).replace("'", '"')
            elif name == "nindent 4":
                value = "\n" + str(value)
            else:
                raise AssertionError(f"unrendered filter {name!r}")
        return str(value)

    rendered = re.sub(r"\{\{-? *(\.Values\.[^}]*?) *\}\}", expression, text)
    assert "{{" not in rendered, rendered
    return rendered


def test_chart_settings_are_valid_and_reach_the_probes() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    signing = values["signing"]
    assert not signing["existingSecret"] and not (signing["key"] and signing["cert"])
    settings = _settings(render_chart_settings(values), "configmap.yaml")
    assert settings.node.ae_title == values["node"]["aeTitle"]
    assert settings.node.http_port == values["node"]["httpPort"] != 0
    # The kubelet's probes and the HTTP Service come from outside the pod.
    assert settings.node.http_host == "0.0.0.0"
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert deployment.count("port: http\n") == 3  # startup, readiness, liveness
