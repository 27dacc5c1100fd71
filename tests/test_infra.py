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


# --- what the deployment must know when it starts ----------------------------------------------
#
# A focused subset of the Bicep compiler's deploy-time-constant rule (BCP120, BCP177, BCP178), on
# the parsed templates: the positions below are evaluated when the deployment starts, so they may
# use parameters, variables built from them, functions such as environment() or guid(), and of a
# resource only its id, name, type and apiVersion (of a module only its name); never what Azure
# returns for a resource (`storage.properties.*`), a module's outputs, reference(), list*() or
# getSecret(). The compiler refuses such a template, older compilers let some through and ARM
# fails instead ("The template function 'reference' is not expected at this location").

# Readable at the start (the compiler's ReadWriteDeployTimeConstantPropertyNames).
READABLE_AT_START = {"id", "name", "type", "apiVersion"}
# Top-level keys of a resource body that need a value known at the start: name, scope, parent and
# the compiler's WriteOnlyDeployTimeConstantPropertyNames. Of a module body: name and scope.
RESOURCE_START_KEYS = {
    "name",
    "scope",
    "parent",
    "location",
    "kind",
    "subscriptionId",
    "resourceGroup",
    "managedBy",
    "managedByExtended",
    "extendedLocation",
    "zones",
    "plan",
    "sku",
    "identity",
    "tags",
}
MODULE_START_KEYS = {"name", "scope"}


def declaration_parts(declaration: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(for-expression or None, `if` condition or None, body) of a resource or module."""
    config = declaration["config"]
    if "config" in config and ("loop_type" in config or "condition" in config):
        loop = config if "loop_type" in config else None
        return loop, config.get("condition"), config["config"]
    return None, None, config


def loop_source(loop: dict[str, Any]) -> list[Any]:
    """What a parsed for-expression iterates over (an array, an object, or a range's bounds)."""
    detail = loop["loop_type"]["detail"]
    return [
        detail[key]
        for key in ("array_name", "object_name", "start_index", "count")
        if key in detail
    ]


def loop_variables(loop: dict[str, Any]) -> dict[str, str]:
    detail = loop["loop_type"]["detail"]
    names = (detail.get("item_name"), detail.get("index_name"))
    return {name: "loop" for name in names if name}


def symbol_table(template: dict[str, Any]) -> dict[str, str]:
    """Every declared symbol of a template, with its kind."""
    symbols: dict[str, str] = {}
    for section, kind in (
        ("parameters", "param"),
        ("variables", "variable"),
        ("resources", "resource"),
        ("modules", "module"),
    ):
        symbols |= {name: kind for name in template.get(section) or {}}
    return symbols


def interpolations(text: str) -> list[str]:
    """The expressions of a Bicep string's `${...}` parts (braces inside them balanced)."""
    found = []
    index = text.find("${")
    while index != -1:
        if index > 0 and text[index - 1] == "\\":  # an escaped, literal "${"
            index = text.find("${", index + 2)
            continue
        depth, position, quote = 1, index + 2, False
        while depth:
            char = text[position]
            if char == "'":
                quote = not quote
            elif not quote and char == "{":
                depth += 1
            elif not quote and char == "}":
                depth -= 1
            position += 1
        found.append(text[index + 2 : position - 1])
        index = text.find("${", position)
    return found


def parse_expression(expression: str) -> Any:
    """A Bicep expression (an interpolation's inside), parsed the way pycep parses a value."""
    return BicepParser().parse(text=f"var parsed = {expression}\n")["variables"]["parsed"]["value"]


def chain_member(chain: Any) -> str | None:
    """The first property name of the right-hand side of a parsed `a.b.c` (here `b`)."""
    while isinstance(chain, dict) and isinstance(chain.get("operator"), dict):
        chain = chain["operator"]["operands"]["operand_1"]
    return chain if isinstance(chain, str) else None


def runtime_reads(value: Any, symbols: dict[str, str], runtime: set[str]) -> list[str]:
    """What a parsed expression reads that is only known once resources are deployed.

    `runtime` holds the variables already known to read such a value. A plain string that names
    a declared symbol is taken as a reference to it (pycep drops the quotes of string literals)."""

    def reads(item: Any) -> list[str]:
        return runtime_reads(item, symbols, runtime)

    def member_chain(chain: Any) -> list[str]:
        """Index expressions and instance function calls in the property names after a symbol."""
        if not isinstance(chain, dict) or not isinstance(chain.get("operator"), dict):
            return []
        operator = chain["operator"]
        operands = operator["operands"]
        if operator["type"] == "function_accessor":
            return [f".{operands['func_name']}()"]
        if operator["type"] == "index_accessor":
            return member_chain(operands["operand_1"]) + reads(operands["operand_2"])
        return member_chain(operands["operand_1"]) + member_chain(operands["operand_2"])

    if isinstance(value, str):
        if IDENTIFIER.fullmatch(value):
            return [f"{value} (a variable that reads a runtime value)"] if value in runtime else []
        if value.startswith("{") and value.endswith("}"):
            # pycep writes some loop sources as the repr of their parsed expression.
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return []
            return reads(parsed)
        return [
            read
            for expression in interpolations(value)
            for read in reads(parse_expression(expression))
        ]
    if isinstance(value, list):
        return [read for item in value for read in reads(item)]
    if not isinstance(value, dict):
        return []
    if "loop_type" in value:
        inner = {**symbols, **loop_variables(value)}
        found = [read for source in loop_source(value) for read in reads(source)]
        return found + runtime_reads([value.get("condition"), value.get("config")], inner, runtime)
    function = value.get("function")
    if isinstance(function, dict) and "type" in function:
        name = function["type"]
        if name == "reference" or name.startswith("list"):
            return [f"{function.get('parameters', {}).get('func_name', name)}()"]
        return reads(list((function.get("parameters") or {}).values()))
    operator = value.get("operator")
    if isinstance(operator, dict) and "type" in operator:
        operands = operator["operands"]
        if operator["type"] == "function_accessor":  # storage.listKeys(), vault.getSecret(...)
            return [f"{chain_member(operands['operand_1'])}.{operands['func_name']}()"]
        if operator["type"] == "property_accessor":
            base, rest = operands["operand_1"], operands["operand_2"]
            found = member_chain(rest)
            if isinstance(base, dict) and base.get("operator", {}).get("type") == "index_accessor":
                found += reads(base["operator"]["operands"]["operand_2"])  # collection[i].x
                base = base["operator"]["operands"]["operand_1"]
            member = chain_member(rest)
            kind = symbols.get(base) if isinstance(base, str) else None
            if kind == "resource" and member not in READABLE_AT_START:
                return [f"{base}.{member}", *found]
            if kind == "module" and member != "name":
                return [f"{base}.{member}", *found]
            return reads(base) + found
        return reads(list(operands.values()))
    # An object literal: its values, and its keys that are interpolated strings.
    return reads([key for key in value if isinstance(key, str) and "${" in key]) + reads(
        list(value.values())
    )


def runtime_variables(template: dict[str, Any]) -> dict[str, list[str]]:
    """The variables that read a runtime value, directly or through another variable."""
    symbols = symbol_table(template)
    variables = template.get("variables") or {}
    runtime: dict[str, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for name, variable in variables.items():
            if name not in runtime:
                found = runtime_reads(variable["value"], symbols, set(runtime))
                if found:
                    runtime[name] = found
                    changed = True
    return runtime


def start_of_deployment_problems(template: dict[str, Any]) -> list[str]:
    """Every position the deployment needs when it starts that reads a runtime value."""
    symbols = symbol_table(template)
    runtime_by_variable = runtime_variables(template)
    runtime = set(runtime_by_variable)
    problems: list[str] = []

    def check(where: str, value: Any, scope: dict[str, str]) -> None:
        for read in runtime_reads(value, scope, runtime):
            variable = read.split(" ", 1)[0]
            because = list(dict.fromkeys(runtime_by_variable.get(variable, [])))
            problems.append(f"{where}: {read}" + (f", {', '.join(because)}" if because else ""))

    def check_loops(where: str, value: Any, scope: dict[str, str]) -> None:
        """The source of every for-expression in a parsed value."""
        if isinstance(value, list):
            for index, item in enumerate(value):
                check_loops(f"{where}[{index}]", item, scope)
        elif isinstance(value, dict):
            if "loop_type" in value:
                check(f"{where} (for-expression source)", loop_source(value), scope)
                inner = {**scope, **loop_variables(value)}
                check_loops(where, [value.get("condition"), value.get("config")], inner)
                return
            for key, item in value.items():
                check_loops(f"{where}.{key}", item, scope)

    for section, start_keys in (("resources", RESOURCE_START_KEYS), ("modules", MODULE_START_KEYS)):
        for name, declaration in (template.get(section) or {}).items():
            loop, condition, body = declaration_parts(declaration)
            scope = dict(symbols)
            if loop is not None:
                check(f"{name} (for-expression source)", loop_source(loop), scope)
                scope |= loop_variables(loop)
            if condition is not None:
                check(f"{name} (if condition)", condition, scope)
            for key in sorted(start_keys & set(body)):
                check(f"{name}.{key}", body[key], scope)
            check_loops(name, body, scope)
    for name, variable in (template.get("variables") or {}).items():
        check_loops(f"variable {name}", variable["value"], symbols)
    return problems


# Site properties the Flex Consumption plan refuses ("The following list of ... site configuration
# properties (Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is invalid"): the
# properties of "Flex Consumption plan deprecations" in the Azure Functions app settings reference,
# in properties or properties.siteConfig of a Microsoft.Web/sites resource (compared ignoring case;
# the page writes isReserved, ARM reserved).
FLEX_REFUSED_SITE_PROPERTIES = {
    "alwaysOn",
    "containerSize",
    "ftpsState",
    "isReserved",
    "reserved",
    "isXenon",
    "javaVersion",
    "linuxFxVersion",
    "netFrameworkVersion",
    "powerShellVersion",
    "functionAppScaleLimit",
    "preWarmedInstanceCount",
    "use32BitWorkerProcess",
    "vnetBackupRestoreEnabled",
    "vnetContentShareEnabled",
    "vnetImagePullEnabled",
    "vnetRouteAllEnabled",
    "windowsFxVersion",
}
# App settings the same page lists as deprecated on Flex Consumption (replaced by functionAppConfig,
# set by the platform, or not used).
FLEX_DEPRECATED_APP_SETTINGS = {
    "ENABLE_ORYX_BUILD",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_DNS_SERVER",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_VNET_ROUTE_ALL",
}


def flex_refused_site_properties(template: dict[str, Any]) -> list[str]:
    """Every refused site property a Microsoft.Web/sites resource (or its `web` config) sets."""
    refused = {name.lower() for name in FLEX_REFUSED_SITE_PROPERTIES}
    found = []
    for name, declaration in (template.get("resources") or {}).items():
        if declaration["existing"]:
            continue
        _, _, body = declaration_parts(declaration)
        places = []
        if declaration["type"] == "Microsoft.Web/sites":
            properties = body.get("properties") or {}
            places = [
                ("properties", properties),
                ("properties.siteConfig", properties.get("siteConfig")),
            ]
        elif declaration["type"] == "Microsoft.Web/sites/config" and body.get("name") == "web":
            places = [("properties", body.get("properties"))]
        for where, block in places:
            if isinstance(block, dict):
                found += [f"{name}: {where}.{key}" for key in block if key.lower() in refused]
    return found


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


def test_readme_settings_defaults_say_what_azure_deploys(templates):
    """The Settings table's default is the code's; where Azure gets another: "Azure: `x`"."""
    main = templates["main.bicep"]
    service = resource_config(main["modules"]["functionApp"])["params"]["serviceSettings"]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    compared = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names, default = (column.strip() for column in line.split("|")[1:3])
        name = names.strip("`")
        value = service.get(name)
        if isinstance(value, dict) and value.get("function", {}).get("type") == "string":
            value = value["function"]["parameters"]["value_to_convert"]  # string(parameter)
        parameter = main["parameters"].get(value) if isinstance(value, str) else None
        if parameter is None or "default" not in parameter:
            continue  # not a parameter of main.bicep (a Key Vault reference, an output, ...)
        if default.startswith("`"):
            code_default = default.split("`")[1]
        elif default.startswith("empty"):
            code_default = ""
        else:
            continue  # the run command's value (local), or none
        deployed = parameter["default"]
        deployed = str(deployed).lower() if isinstance(deployed, bool) else str(deployed)
        compared[name] = (code_default, deployed)
        if deployed == code_default:
            assert "Azure:" not in default, name
        else:
            assert f"Azure: `{deployed}`" in default, f"{name}: Azure deploys {deployed!r}"
    assert len(compared) > 20, "the table or main.bicep changed shape: the check compared little"
    assert compared["RENEWAL_CONCURRENCY"] == ("32", "16")  # the check sees a real difference


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


# --- what the deployment must know when it starts, and what Flex Consumption refuses ----------

# The app settings and site config of infra/app/function-app.bicep before issue 14 (abridged,
# the defective lines as they were): the compiler refuses its appSettings loop (BCP178), whose
# source reads storage.properties and applicationInsights.properties, and Flex Consumption refuses
# its ftpsState.
OLD_FUNCTION_APP = """
param name string
param location string
param identityClientId string
param storageAccountName string
param applicationInsightsName string
param serviceSettings object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var platformSettings = {
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  kind: 'functionapp,linux'
  properties: {
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: [for setting in items(union(serviceSettings, platformSettings)): {
        name: setting.key
        value: setting.value
      }]
    }
  }
}
"""


def test_what_the_deployment_needs_at_its_start_reads_no_runtime_value(templates):
    """Loop sources, names, locations, scopes, conditions: parameters and their variables only."""
    problems = {name: start_of_deployment_problems(t) for name, t in templates.items()}
    assert problems == {name: [] for name in templates}
    # The app settings loop (its source is union(serviceSettings, platformSettings), see
    # app_settings) now reads parameters only: the storage URIs are built from the account name
    # and the cloud's storage suffix, the connection string is a parameter.
    app = templates["app/function-app.bicep"]
    assert runtime_variables(app) == {}
    for kind in ("blob", "queue", "table"):
        uri = app["variables"][f"{kind}ServiceUri"]["value"]
        assert uri == f"https://${{storageAccountName}}.{kind}.${{environment().suffixes.storage}}/"
        assert (
            app_settings(templates)[f"AzureWebJobsStorage__{kind}ServiceUri"] == f"{kind}ServiceUri"
        )


def test_the_start_of_deployment_check_finds_the_old_app_settings_loop():
    problems = start_of_deployment_problems(BicepParser().parse(text=OLD_FUNCTION_APP))
    assert problems == [
        "functionApp.properties.siteConfig.appSettings (for-expression source): platformSettings "
        "(a variable that reads a runtime value), storage.properties, "
        "applicationInsights.properties"
    ]


START_OF_DEPLOYMENT_CASES = {
    # name: (Bicep, the problems expected)
    "resource name from a runtime property": (
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: 'st1' }\n"
        "resource c 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {\n"
        "  name: '${st.properties.primaryEndpoints.blob}x'\n}\n",
        ["c.name: st.properties"],
    ),
    "location from a module output": (
        "module m 'm.bicep' = {\n  name: 'm'\n}\n"
        "resource s 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n"
        "  name: 'st2'\n  location: m.outputs.location\n}\n",
        ["s.location: m.outputs"],
    ),
    "module scope from reference()": (
        "param id string\n"
        "module m 'm.bicep' = {\n  name: 'm'\n"
        "  scope: resourceGroup(reference(id, '2023-05-01').resourceGroup)\n}\n",
        ["m.scope: reference()"],
    ),
    "condition on a runtime property": (
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: 'st1' }\n"
        "module m 'm.bicep' = if (st.properties.isHnsEnabled) {\n  name: 'm'\n}\n",
        ["m (if condition): st.properties"],
    ),
    "variable loop over list*()": (
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: 'st1' }\n"
        "var keys = [for k in st.listKeys().keys: k.keyName]\n",
        ["variable keys (for-expression source): st.listKeys()"],
    ),
    "resource loop over a variable built from a runtime property": (
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: 'st1' }\n"
        "var rules = st.properties.networkAcls.ipRules\n"
        "resource r 'Microsoft.Storage/storageAccounts@2023-05-01' = [for rule in rules: {\n"
        "  name: rule.value\n}]\n",
        ["r (for-expression source): rules (a variable that reads a runtime value), st.properties"],
    ),
    "what is known at the start": (
        "param location string\nparam names array\n"
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: 'st1' }\n"
        "module m 'm.bicep' = { name: 'm' }\n"
        "var suffix = environment().suffixes.storage\n"
        "var uri = 'https://${st.name}.blob.${suffix}/'\n"
        "resource c 'Microsoft.Storage/storageAccounts@2023-05-01' = [for (n, i) in names: {\n"
        "  name: '${take(uniqueString(st.id, m.name, uri), 8)}${i}'\n"
        "  location: location\n  tags: { '${st.type}': st.apiVersion }\n"
        "  properties: { a: st.properties.x, b: m.outputs.y }\n}]\n",
        [],
    ),
}


@pytest.mark.parametrize("case", START_OF_DEPLOYMENT_CASES)
def test_the_start_of_deployment_check_finds_each_kind_of_runtime_read(case):
    bicep, expected = START_OF_DEPLOYMENT_CASES[case]
    assert start_of_deployment_problems(BicepParser().parse(text=bicep)) == expected


def test_no_site_property_that_flex_consumption_refuses(templates):
    found = [
        f"{name}: {p}" for name, t in templates.items() for p in flex_refused_site_properties(t)
    ]
    assert found == []
    site = resource_config(templates["app/function-app.bicep"]["resources"]["functionApp"])
    assert site["properties"]["siteConfig"], "the check would find nothing to look at"


def test_the_flex_consumption_check_finds_the_old_ftps_state():
    assert flex_refused_site_properties(BicepParser().parse(text=OLD_FUNCTION_APP)) == [
        "functionApp: properties.siteConfig.ftpsState"
    ]
    web_config = (
        "resource site 'Microsoft.Web/sites@2024-04-01' existing = { name: 'app' }\n"
        "resource web 'Microsoft.Web/sites/config@2024-04-01' = {\n  parent: site\n  name: 'web'\n"
        "  properties: { linuxFxVersion: 'Python|3.11', AlwaysOn: true, http20Enabled: true }\n}\n"
    )
    assert flex_refused_site_properties(BicepParser().parse(text=web_config)) == [
        "web: properties.linuxFxVersion",
        "web: properties.AlwaysOn",
    ]


def test_no_app_setting_that_flex_consumption_deprecates(templates):
    settings = app_settings(templates)
    assert not {name.upper() for name in settings} & FLEX_DEPRECATED_APP_SETTINGS


# --- resources -------------------------------------------------------------------------------


def test_function_app_runs_on_flex_consumption_with_its_identity(templates):
    app = templates["app/function-app.bicep"]
    plan = resource_config(app["resources"]["plan"])
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = resource_config(app["resources"]["functionApp"])
    properties = site["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert "ftpsState" not in properties["siteConfig"]  # refused by Flex Consumption (no FTP)
    config = properties["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${blobServiceUri}${deploymentContainerName}"
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
    # No basic-auth publishing, FTP or SCM; each policy with the location its schema asks for.
    policies = {
        resource_config(r)["name"]: (resource_config(r)["properties"]["allow"], r["config"])
        for r in app["resources"].values()
        if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    }
    assert set(policies) == {"ftp", "scm"}
    for allow, body in policies.values():
        assert allow is False
        assert body["parent"] == "functionApp" and body["location"] == "location"


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
    # The connection string comes in as a parameter (a module's parameters are known when its
    # deployment starts, so the app settings loop may read it), from the monitoring module.
    assert (
        settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "applicationInsightsConnectionString"
    )
    params = resource_config(templates["main.bicep"]["modules"]["functionApp"])["params"]
    assert params["applicationInsightsConnectionString"] == parse_expression(
        "monitoring.outputs.applicationInsightsConnectionString"
    )
    output = monitoring["outputs"]["applicationInsightsConnectionString"]["value"]
    assert output == parse_expression("applicationInsights.properties.ConnectionString")


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
