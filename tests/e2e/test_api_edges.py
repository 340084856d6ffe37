"""Edge behaviours: revoking twice, where a NUL was found, the CLI refusing a foreign program."""

from __future__ import annotations

from typer.testing import CliRunner

from loyalty.entrypoints.cli.main import app as cli


def test_revoking_a_key_twice_keeps_the_first_revocation_time(api):
    created = api.request("POST", "/v1/api-keys", json={"name": "till", "scopes": ["read"]})
    key_id = created.json()["id"]
    assert api.request("DELETE", f"/v1/api-keys/{key_id}").status_code == 204
    first = {k["id"]: k for k in api.request("GET", "/v1/api-keys").json()["items"]}[key_id]
    assert api.request("DELETE", f"/v1/api-keys/{key_id}").status_code == 204
    second = {k["id"]: k for k in api.request("GET", "/v1/api-keys").json()["items"]}[key_id]
    assert first["revoked_at"] is not None
    assert second["revoked_at"] == first["revoked_at"]
    assert api.request("GET", "/v1/programs", token=created.json()["token"]).status_code == 401


def test_a_nul_is_reported_where_it_was_found(api):
    program = api.create_program()
    r = api.request("GET", f"/v1/programs/{program}/members?email=a%00b@example.com")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "query"
    r = api.request("POST", f"/v1/programs/{program}/members", json={"external_id": "C\u0000"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"
    assert api.request("GET", f"/v1/programs/{program}/members").json()["items"] == []


def test_the_cli_refuses_a_key_for_a_program_of_another_tenant(api):
    program = api.create_program()
    url = api.engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(
        cli, ["apikey", "create", "--tenant", "other", "--program", program, "--database-url", url]
    )
    assert result.exit_code == 1
    assert "program_not_found" in result.output
    assert "Traceback" not in result.output
