"""ext_authz hot reload through Envoy: a valid config change applies without a restart; a bad one is refused.

Both ways a service gets its config: from the control plane (which reads the file and publishes a version)
and standalone (the service watches the file itself, beside an Envoy configured statically).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import start_stack
from tests.harness import example_config_dict

PROFILE = "/api/v1/users/profile"


@pytest.mark.parametrize("control_plane", [True, False], ids=["control-plane", "standalone"])
def test_rbac_change_applies_and_bad_file_keeps_running_config(tmp_path: Path, control_plane: bool) -> None:
    data = example_config_dict()
    data["services"]["xds"]["enabled"] = control_plane
    stack = start_stack(tmp_path, data)
    try:
        headers = {"authorization": f"Bearer {stack.token('alice', ('user',))}"}
        pid = stack.procs["ext_authz"].proc.pid  # type: ignore[union-attr]
        assert stack.request("DELETE", PROFILE, headers=headers).status_code == 403

        data = yaml.safe_load(stack.config_path.read_text())
        data["rbac"]["roles"]["user"][0]["actions"] = ["read", "write", "delete"]
        stack.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        stack.wait_until(lambda: stack.request("DELETE", PROFILE, headers=headers).status_code == 200,
                         what="the new RBAC grant to apply")

        # A broken file (a route to an upstream that does not exist) is refused; the last good config stays.
        data["rbac"]["roles"]["user"][0]["actions"] = ["read"]
        data["routes"][1]["upstream"] = "nowhere"
        stack.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        # Who reads the file says why it refused it: the control plane, or the standalone service.
        log = stack.workdir / ("xds_server.log" if control_plane else "ext_authz.log")
        message = "config file rejected" if control_plane else "config change rejected"
        stack.wait_until(lambda: message in log.read_text(), what="the rejection to be logged")
        rejection = next(json.loads(line) for line in log.read_text().splitlines() if message in line)
        if control_plane:
            assert any(p.startswith(str(stack.config_path)) and "routes[1].upstream: unknown upstream 'nowhere'" in p
                       for p in rejection["problems"]), rejection
        else:
            assert rejection["file"] == str(stack.config_path)
            assert rejection["issues"][0]["field"] == "routes[1].upstream"
            assert "unknown upstream 'nowhere'" in rejection["issues"][0]["reason"]
        assert stack.request("DELETE", PROFILE, headers=headers).status_code == 200
        assert stack.procs["ext_authz"].proc.pid == pid  # type: ignore[union-attr]
    finally:
        stack.stop()
