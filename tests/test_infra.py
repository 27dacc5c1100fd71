"""The deployment templates (infra/, azure.yaml) parse, pass checkov and set what the code needs.

No Bicep CLI and no network: pycep-parser parses every Bicep file and checkov (with
--skip-download, update check off) runs its Bicep and secrets checks. The settings tests read the
parsed templates: every setting the deployed code reads is set on the function app, secrets only
as Key Vault references, and no setting or output carries a key or a secret.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CHECKOV_CONFIG = INFRA / ".checkov.yaml"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# The code that is deployed (.funcignore leaves out localrun/, tests/, scripts/).


def _deployed_code() -> list[Path]:
    """function_app.py and every package `.funcignore` lets into the deployment package."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    packages = [
        folder
        for folder in sorted(ROOT.iterdir())
        if (folder / "__init__.py").exists() and folder.name not in ignored
    ]
    return [
        ROOT / "function_app.py",
        *(path for pkg in packages for path in sorted(pkg.glob("*.py"))),
    ]


DEPLOYED_CODE = _deployed_code()

# Settings the code reads that Azure must NOT get, each with the reason.
NOT_SET_IN_AZURE = {
    "ALLOW_LOCAL_INSTANCES": "admits loopback instances: local run and tests only",
    "AzureWebJobsStorage": "a connection string (holds the account key): local run only",
    "AzureWebJobsStorage__accountName": "fallback when the service URIs are unset; they are set",
    "REQUESTS_CA_BUNDLE": "trusts the local stand-ins' CA: local run only",
    "CURL_CA_BUNDLE": "trusts the local stand-ins' CA: local run only",
}
# Read by the Azure SDK (DefaultAzureCredential), not by our code: the user-assigned identity.
READ_BY_SDK = {"AZURE_CLIENT_ID"}
KEY_VAULT_REFERENCES = ("NOTIFY_WEBHOOK_SECRET", "GRAPH_CLIENT_SECRET")

ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": ("Storage Blob Data Owner", "storage"),
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": ("Storage Queue Data Contributor", "storage"),
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": ("Storage Table Data Contributor", "storage"),
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": ("Key Vault Secrets Officer", "vault"),
    "3913510d-42f4-4e42-8a64-420c390055eb": ("Monitoring Metrics Publisher", "applicationInsights"),
}

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- helpers --------------------------------------------------------------------------------


def parse_bicep(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    """Every Bicep file, parsed, by its path relative to infra/."""
    return {path.relative_to(INFRA).as_posix(): parse_bicep(path) for path in BICEP_FILES}


def resource_config(resource: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, also when it is deployed under an `if` condition."""
    config = resource["config"]
    if "condition" in config and "config" in config:
        return config["config"]
    return config


def references(value: Any) -> set[str]:
    """The symbols (parameters, variables, resources, modules) a parsed expression refers to."""
    found: set[str] = set()
    if isinstance(value, str):
        if IDENTIFIER.fullmatch(value):
            found.add(value)
        elif value.startswith("{") and value.endswith("}"):
            # pycep writes a loop's source as the repr of its parsed expression.
            found |= references(ast.literal_eval(value))
        else:
            for expression in re.findall(r"\$\{([^}]*)\}", value):
                found |= set(IDENTIFIER.findall(expression))
    elif isinstance(value, dict):
        operator = value.get("operator")
        if isinstance(operator, dict) and operator.get("type") == "property_accessor":
            # a.b.c: only `a` is a symbol, the rest are property names.
            return references(operator["operands"]["operand_1"])
        for key, item in value.items():
            if isinstance(key, str) and "${" in key:
                found |= references(key)
            found |= references(item)
    elif isinstance(value, list):
        for item in value:
            found |= references(item)
    return found


def walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, leaf) for every leaf of a parsed resource body."""
    if isinstance(value, dict):
        if "operator" in value or "function" in value:
            return [(path, value)]
        leaves = []
        for key, item in value.items():
            leaves += walk(item, f"{path}.{key}" if path else str(key))
        return leaves
    if isinstance(value, list):
        leaves = []
        for index, item in enumerate(value):
            leaves += walk(item, f"{path}[{index}]")
        return leaves
    return [(path, value)]


def is_secure(parameter: dict[str, Any]) -> bool:
    return any(d.get("type") == "secure" for d in parameter.get("decorators") or [])


def tainted_symbols(template: dict[str, Any]) -> set[str]:
    """@secure() parameters and every variable computed from one."""
    tainted = {name for name, p in (template.get("parameters") or {}).items() if is_secure(p)}
    variables = template.get("variables") or {}
    changed = True
    while changed:
        changed = False
        for name, variable in variables.items():
            if name not in tainted and references(variable.get("value")) & tainted:
                tainted.add(name)
                changed = True
    return tainted


def app_settings(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The function app's app settings: name -> parsed value expression."""
    app = templates["app/function-app.bicep"]
    site = resource_config(app["resources"]["functionApp"])
    loop = site["properties"]["siteConfig"]["appSettings"]
    # The settings are exactly union(serviceSettings, platformSettings), one entry per key.
    assert loop["loop_type"]["type"] == "object"
    source = ast.literal_eval(loop["loop_type"]["detail"]["object_name"])
    assert source == {
        "function": {
            "type": "union",
            "parameters": {"arg_1": "serviceSettings", "arg_2": "platformSettings"},
        }
    }
    item = loop["loop_type"]["detail"]["item_name"]
    assert references(loop["config"]["name"]) == {item}
    assert loop["config"]["name"]["operator"]["operands"]["operand_2"] == "key"
    assert loop["config"]["value"]["operator"]["operands"]["operand_2"] == "value"

    platform = app["variables"]["platformSettings"]["value"]
    main = templates["main.bicep"]
    service = resource_config(main["modules"]["functionApp"])["params"]["serviceSettings"]
    assert not set(platform) & set(service), "a setting is set twice"
    return {**service, **platform}


def settings_read_by_code() -> set[str]:
    """Setting names (or regular expressions, for names built at run time) the code reads."""
    names: set[str] = set()
    for path in DEPLOYED_CODE:
        text = path.read_text(encoding="utf-8")
        constants = {}
        for name, value in re.findall(r"^([A-Z_]*SETTINGS?)\s*=\s*(.+)$", text, re.MULTILINE):
            try:
                literal = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(literal, str):
                constants[name] = literal  # STORAGE_SETTING = "AzureWebJobsStorage"
            elif isinstance(literal, tuple) and all(isinstance(n, str) for n in literal):
                names |= set(literal)  # GRAPH_SETTINGS = ("GRAPH_TENANT_ID", ...), read one by one
        # os.environ.get(STORAGE_SETTING)
        for constant in re.findall(r"(?:environ|settings)\.get\(\s*([A-Z_]+)\s*[,)]", text):
            names.add(constants[constant])
        # environ.get("X"), settings.get("X"), os.environ.get(f"{CONST}__{kind}ServiceUri")
        for is_f, name in re.findall(r'(?:environ|settings)\.get\(\s*(f?)"([^"]+)"', text):
            if not is_f:
                names.add(name)
                continue
            for constant, constant_value in constants.items():
                name = name.replace("{" + constant + "}", constant_value)
            if "{" not in name:
                names.add(name)
                continue
            # A part only known at run time (f"...__{kind}ServiceUri"): any word there.
            parts = re.split(r"\{[^}]*\}", name)
            names.add("re:" + "[A-Za-z]+".join(re.escape(part) for part in parts))
        # helpers called with the mapping first: _setting(settings, "X"), _number(environ, "X", 1)
        names |= set(
            re.findall(r'\(\s*(?:environ|settings)\s*,\s*"([A-Za-z_][A-Za-z0-9_]*)"', text)
        )
        # binding expressions: schedule="%RENEWAL_SCHEDULE%"
        names |= set(re.findall(r'"%([A-Za-z_][A-Za-z0-9_]*)%"', text))
    return names


def readme_settings() -> set[str]:
    """The setting names in the README "Settings" table (first column)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_column = line.split("|")[1]
        for name in re.findall(r"`([^`]+)`", first_column):
            names.add("AzureWebJobsStorage" + name if name.startswith("__") else name)
    assert names, "no settings found in the README Settings table"
    return names


def checkov_executable() -> str:
    configured = os.environ.get("CHECKOV_BIN")
    if configured:
        return configured
    beside_python = Path(sys.executable).parent / "checkov"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("checkov")
    if not found:
        pytest.fail("checkov is not installed: run scripts/setup (requirements-dev.txt)")
    return found


def run_checkov(arguments: list[str], cwd: Path, home: Path) -> list[dict[str, Any]]:
    """Runs checkov offline and returns its JSON reports (one per framework with results)."""
    env = {
        **os.environ,
        "HOME": str(home),  # no user-level .checkov.yaml
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
        "CKV_PARSE_ERROR_FAIL": "true",
        "LOG_LEVEL": "ERROR",
    }
    completed = subprocess.run(  # noqa: S603 - fixed arguments, our own tool
        [checkov_executable(), *arguments, "--output", "json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    reports = json.loads(completed.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    for report in reports:
        summary = report.get("summary", report)
        assert summary["parsing_errors"] == 0, report
    return reports


def failed_checks(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]


def skip_list() -> list[str]:
    return yaml.safe_load(CHECKOV_CONFIG.read_text(encoding="utf-8"))["skip-check"]


# --- parsing --------------------------------------------------------------------------------


def test_the_expected_templates_exist():
    names = {path.relative_to(INFRA).as_posix() for path in BICEP_FILES}
    assert {"main.bicep", "app/function-app.bicep", "core/key-vault.bicep"} <= names
    assert (INFRA / "main.parameters.json").is_file()


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path):
    parsed = parse_bicep(path)
    assert parsed.get("resources") or parsed.get("modules")


def test_every_module_is_a_local_file(templates):
    for name, template in templates.items():
        for module_name, module in (template.get("modules") or {}).items():
            assert module["type"] == "local", f"{name}: module {module_name} is not a local file"
            target = (INFRA / name).parent / module["detail"]["path"]
            assert target.is_file(), f"{name}: module {module_name} -> {target} is missing"
    for path in INFRA.rglob("*"):
        if path.is_file():
            assert "br/public:" not in path.read_text(encoding="utf-8"), path


# --- checkov --------------------------------------------------------------------------------


def test_checkov_reports_no_failed_check(tmp_path):
    reports = run_checkov(["--config-file", str(CHECKOV_CONFIG)], cwd=ROOT, home=tmp_path)
    failures = [
        f"{c['check_id']} {c['check_name']} ({c['file_path']} {c['resource']})"
        for c in failed_checks(reports)
    ]
    assert failures == []
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert bicep and bicep[0]["summary"]["passed"] > 0, "checkov ran no Bicep check"


def test_skipped_checks_are_listed_once_with_a_reason_and_still_needed(tmp_path):
    skipped = skip_list()
    assert len(skipped) == len(set(skipped))
    lines = CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines()
    for check_id in skipped:
        index = lines.index(f"  - {check_id}")
        assert lines[index - 1].strip().startswith("# "), f"{check_id} has no reason above it"
    # The one place: no inline suppressions in the templates.
    for path in INFRA.rglob("*.bicep"):
        assert "checkov:skip" not in path.read_text(encoding="utf-8"), path
    # Without the skip list exactly the skipped checks fail: none is stale, none hides another.
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns(".checkov.yaml"))
    arguments = ["-d", "infra", "--framework", "bicep", "secrets", "--skip-download"]
    reports = run_checkov([*arguments, "--compact", "--quiet"], cwd=tmp_path, home=tmp_path)
    assert {c["check_id"] for c in failed_checks(reports)} == set(skipped)


def test_checkov_secret_scan_runs_on_bicep_files(tmp_path):
    """A planted credential is found, so 'no failed check' above means the secrets scan ran."""
    planted = tmp_path / "infra"
    planted.mkdir()
    access_key = "AKIA" + "QYLPMN5HHHFPZAM2"  # AWS access key shape; built so no scanner trips here
    (planted / "main.bicep").write_text(f"var leaked = '{access_key}'\n", encoding="utf-8")
    arguments = ["-d", "infra", "--framework", "secrets", "--skip-download", "--quiet"]
    reports = run_checkov(arguments, cwd=tmp_path, home=tmp_path)
    assert {c["check_id"] for c in failed_checks(reports)} == {"CKV_SECRET_2"}


# --- settings ----------------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_set_on_the_function_app(templates):
    settings = app_settings(templates)
    read = settings_read_by_code()
    assert "KEY_VAULT_URL" in read and "RENEWAL_SCHEDULE" in read  # the scan itself works
    missing = []
    for name in sorted(read):
        if name in NOT_SET_IN_AZURE:
            continue
        if name.startswith("re:"):
            if not any(re.fullmatch(name[3:], n) for n in settings):
                missing.append(name)
        elif name not in settings:
            missing.append(name)
    assert missing == []
    # The storage kinds the code and the host use, identity-based, and the identity itself.
    for kind in ("blob", "queue", "table"):
        assert f"AzureWebJobsStorage__{kind}ServiceUri" in settings
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    for name in READ_BY_SDK:
        assert settings[name] == "identityClientId"


def test_every_readme_setting_for_azure_is_set(templates):
    settings = app_settings(templates)
    for name in sorted(readme_settings()):
        if name in NOT_SET_IN_AZURE or name.startswith("LOCAL_"):
            assert name not in settings, f"{name} must not be set in Azure"
        else:
            assert name in settings, f"README setting {name} is not set by the templates"


def test_local_only_settings_are_never_set(templates):
    settings = app_settings(templates)
    for name in NOT_SET_IN_AZURE:
        assert name not in settings
    for path in INFRA.rglob("*"):
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            code = [line for line in lines if not line.strip().startswith(("//", "#"))]
            assert "ALLOW_LOCAL_INSTANCES" not in "\n".join(code), path


def test_secrets_reach_the_app_only_as_key_vault_references(templates):
    settings = app_settings(templates)
    vault = templates["core/key-vault.bicep"]
    for name in KEY_VAULT_REFERENCES:
        match = re.fullmatch(
            r"@Microsoft\.KeyVault\(SecretUri=\$\{keyVault\.outputs\.(\w+)\}\)", settings[name]
        )
        assert match, f"{name} is not a Key Vault reference: {settings[name]!r}"
        uri = vault["outputs"][match.group(1)]["value"]
        # Versionless: the reference follows the newest version (rotation, see the README).
        assert re.fullmatch(r"\$\{vault\.properties\.vaultUri\}secrets/\$\{\w+\}", uri), uri
    site = resource_config(templates["app/function-app.bicep"]["resources"]["functionApp"])
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    assert site["identity"]["type"] == "UserAssigned"
    main = templates["main.bicep"]
    assert settings["KEY_VAULT_URL"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "keyVault",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "uri"},
                    }
                },
            },
        }
    }
    assert main["parameters"]["renewalSchedule"]["default"] == "0 */5 * * * *"
    assert (
        main["parameters"]["allowedInstanceSuffixes"]["default"]
        == ".service-now.com,.servicenowservices.com"
    )


def test_no_setting_or_output_holds_a_key_or_secret(templates):
    forbidden = re.compile(
        r"listKeys|listkeys|listSecrets|listConnectionStrings|AccountKey=|SharedAccessKey|"
        r"SharedAccessSignature|primaryKey|InstrumentationKey=|getSecret\(",
    )
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not forbidden.search(text), f"{path}: {forbidden.search(text).group(0)}"
    settings = app_settings(templates)
    assert not [n for n in settings if "INSTRUMENTATIONKEY" in n.upper()]
    assert not [n for n in settings if "CONNECTION_STRING" in n and not n.startswith("APPLICATION")]

    for name, template in templates.items():
        tainted = tainted_symbols(template)
        for output_name, output in (template.get("outputs") or {}).items():
            assert not references(output["value"]) & tainted, f"{name}: output {output_name}"
        for resource_name, resource in (template.get("resources") or {}).items():
            body = resource_config(resource)
            for path, leaf in walk(body):
                if not references(leaf) & tainted:
                    continue
                assert resource["type"] == "Microsoft.KeyVault/vaults/secrets", (name, path)
                assert path == "properties.value", f"{name}: {resource_name}.{path}"
        for module_name, module in (template.get("modules") or {}).items():
            target_path = ((INFRA / name).parent / module["detail"]["path"]).resolve()
            target = templates[target_path.relative_to(INFRA.resolve()).as_posix()]
            for param, value in (resource_config(module).get("params") or {}).items():
                if references(value) & tainted:
                    assert is_secure(target["parameters"][param]), f"{name}: {module_name}.{param}"
        # A secure parameter may only be passed on (to a secure parameter or a secret's value).
        if name == "app/function-app.bicep":
            assert not tainted

    # Each @secure() value ends in a Key Vault secret, never in a setting.
    main = templates["main.bicep"]
    assert tainted_symbols(main) == {
        "notifyWebhookSecret",
        "eventsWebhookSecret",
        "graphClientSecret",
    }
    service = resource_config(main["modules"]["functionApp"])["params"]["serviceSettings"]
    assert not references(service) & tainted_symbols(main)


# --- resources -------------------------------------------------------------------------------


def test_function_app_runs_on_flex_consumption_with_its_identity(templates):
    app = templates["app/function-app.bicep"]
    plan = resource_config(app["resources"]["plan"])
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = resource_config(app["resources"]["functionApp"])
    properties = site["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"
    config = properties["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert site["tags"]["function"]["parameters"]["arg_2"] == {"'azd-service-name'": "api"}
    main = templates["main.bicep"]
    params = resource_config(main["modules"]["functionApp"])["params"]
    assert params["pythonVersion"] == "3.11"
    assert params["instanceMemoryMB"] == "instanceMemoryMB"
    assert params["maximumInstanceCount"] == "maximumInstanceCount"
    assert main["parameters"]["instanceMemoryMB"]["type"] == "int"
    assert main["parameters"]["maximumInstanceCount"]["type"] == "int"
    policies = {
        resource_config(r)["name"]: resource_config(r)["properties"]["allow"]
        for r in app["resources"].values()
        if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    }
    assert policies == {"ftp": False, "scm": False}


def test_storage_takes_no_keys(templates):
    storage = templates["core/storage.bicep"]
    properties = resource_config(storage["resources"]["storage"])["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True


def test_key_vault_uses_rbac_soft_delete_and_purge_protection(templates):
    vault = templates["core/key-vault.bicep"]
    properties = resource_config(vault["resources"]["vault"])["properties"]
    assert properties["enableRbacAuthorization"] is True
    assert properties["enableSoftDelete"] is True
    assert "accessPolicies" not in properties
    # The API refuses an explicit false (checkov skips CKV_AZURE_110/42 for this conditional).
    assert properties["enablePurgeProtection"] == {
        "operator": {
            "type": "conditional",
            "operands": {
                "condition": "enablePurgeProtection",
                "true_value": True,
                "false_value": None,
            },
        }
    }
    assert properties["publicNetworkAccess"] == "publicNetworkAccess"
    main = templates["main.bicep"]
    assert main["parameters"]["keyVaultPurgeProtection"]["default"] is True
    params = resource_config(main["modules"]["keyVault"])["params"]
    assert params["enablePurgeProtection"] == "keyVaultPurgeProtection"
    assert params["publicNetworkAccess"] == "keyVaultPublicNetworkAccess"


def test_identity_gets_exactly_its_roles_on_its_resources(templates):
    assignments = {}
    for name, template in templates.items():
        variables = template.get("variables") or {}
        for resource in (template.get("resources") or {}).values():
            if resource["type"] != "Microsoft.Authorization/roleAssignments":
                continue
            body = resource_config(resource)
            role = body["properties"]["roleDefinitionId"]["function"]["parameters"]
            role_id = variables[role["resource_name_1"]]["value"]
            assert body["properties"]["principalId"] == "principalId", name
            assignments[role_id] = body["scope"]
    assert assignments == {role_id: scope for role_id, (_, scope) in ROLES.items()}
    roles = templates["core/role-assignments.bicep"]["resources"]
    assert roles["storage"]["type"] == "Microsoft.Storage/storageAccounts"
    assert roles["vault"]["type"] == "Microsoft.KeyVault/vaults"
    assert roles["applicationInsights"]["type"] == "Microsoft.Insights/components"
    assert all(roles[s]["existing"] for s in ("storage", "vault", "applicationInsights"))


def test_application_insights_takes_entra_id_only(templates):
    monitoring = templates["core/monitoring.bicep"]
    insights = resource_config(monitoring["resources"]["applicationInsights"])["properties"]
    assert insights["DisableLocalAuth"] is True
    assert references(insights["WorkspaceResourceId"]) == {"workspace"}
    settings = app_settings(templates)
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "Authorization=AAD;ClientId=${identityClientId}"
    )


def test_outputs_give_the_operator_what_they_need(templates):
    outputs = templates["main.bicep"]["outputs"]
    assert {
        "AZURE_LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_RESOURCE_GROUP",
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_URL",
        "AZURE_KEY_VAULT_ENDPOINT",
    } <= set(outputs)


def test_parameters_file_matches_the_template(templates):
    parameters = templates["main.bicep"]["parameters"]
    mapped = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    for name, entry in mapped["parameters"].items():
        assert name in parameters, f"main.parameters.json maps unknown parameter {name}"
        match = re.fullmatch(r"\$\{([A-Z_]+)(?:=(.*))?\}", entry["value"])
        assert match, f"{name}: {entry['value']!r}"
        default = parameters[name].get("default")
        if match.group(2) is not None and not isinstance(default, dict):
            expected = str(default).lower() if isinstance(default, bool) else str(default)
            assert match.group(2) == expected, f"{name}: defaults differ"
    for name, parameter in parameters.items():
        assert "default" in parameter or name in mapped["parameters"], f"{name} has no value"


def test_azure_yaml_deploys_the_root_as_a_python_function_app():
    project = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert project["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    assert project["infra"]["path"] == "infra"
