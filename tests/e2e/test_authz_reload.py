"""ext_authz hot reload through Envoy: a valid config change applies without a restart; a bad one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import start_stack
from tests.harness import example_config_dict

PROFILE = "/api/v1/users/profile"


def test_rbac_change_applies_and_bad_file_keeps_running_config(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, example_config_dict())
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
        log = stack.workdir / "ext_authz.log"
        stack.wait_until(lambda: "config change rejected" in log.read_text(), what="the rejection to be logged")
        rejection = next(json.loads(line) for line in log.read_text().splitlines() if "config change rejected" in line)
        assert rejection["file"] == str(stack.config_path)
        assert rejection["issues"][0]["field"] == "routes[1].upstream"
        assert "unknown upstream 'nowhere'" in rejection["issues"][0]["reason"]
        assert stack.request("DELETE", PROFILE, headers=headers).status_code == 200
        assert stack.procs["ext_authz"].proc.pid == pid  # type: ignore[union-attr]
    finally:
        stack.stop()
