"""emlab's own static rules: the weaknesses bandit does not see, found by walking the AST.

bandit matches calls one at a time; most flaws in web code are a *flow*: a value from the
request reaches HTML, SQL, a file path or a redirect without passing a sanitiser. These rules
do a small, flow-insensitive taint analysis per function (statements in source order; a clean
reassignment clears a name), plus a few pattern checks bandit lacks. Each rule names its CWE.

| id    | CWE | what                                                                     |
|-------|-----|--------------------------------------------------------------------------|
| EM101 | 79  | HTML built by string interpolation of request data, returned or sent     |
| EM102 | 79  | request data returned as the response body (Flask serves str as HTML)    |
| EM103 | 79  | jinja2 Template/Environment with autoescape off (bandit only checks      |
|       |     | Environment)                                                             |
| EM104 | 1336| render_template_string / Markup of a string built from request data      |
| EM201 | 89  | SQL text built by f-string, %, .format or + with non-constant parts      |
| EM301 | 22  | request data in a filesystem path (open, send_file, remove, save, ...)   |
| EM302 | 22  | tar extract/extractall without a filter (members=getmembers(), '..')    |
| EM401 | 601 | redirect to a URL taken from the request                                 |
| EM402 | 918 | server-side request to a URL taken from the request                      |
| EM601 | 20  | URL/host check that can be bypassed: unescaped '.' in a host regex,      |
|       |     | substring test, endswith/startswith without a boundary                   |
| EM701 | 502 | unsafe deserialisers bandit misses (jsonpickle, dill, yaml.unsafe_load)  |
| EM801 | 732 | world-writable modes outside os.chmod (mkdir, makedirs, os.open,         |
|       |     | Path.chmod, umask)                                                       |
| EM901 | 611 | XML parser that resolves external entities                               |
| EM105 | 1336| a template compiled from input (jinja2 Template / from_string)           |
| EM106 | 79  | a template string that turns escaping off (|safe, autoescape false)      |
| EM202 | 90  | an LDAP filter built from input                                          |
| EM203 | 643 | an XPath expression built from input                                     |
| EM204 | 730 | a regular expression taken from user input                               |
| EM403 | 400 | a size/count from the request with no bound ('x' * n, range(n), read())  |
| EM501 | 78  | a shell command line built from input                                    |
| EM502 | 95  | eval/exec of non-constant text                                           |
| EM503 | 94  | a module imported by a name from input                                   |
| EM902 | 611 | untrusted XML parsed by stdlib xml / lxml instead of defusedxml          |
| EM205 | 943 | a NoSQL (MongoDB) query taken whole from the request, or $where built    |
|       |     | from input                                                               |
| EM404 | 113 | a response header set from request data (header injection/splitting)    |
| EM405 | 117 | user input written to a log without neutralising line breaks            |
| EM504 | 470 | an attribute or global looked up by a name from input (unsafe reflection)|
| EM505 | 915 | an object built or updated from a whole request dict (mass assignment)  |

EM205-EM505 were added in audit 3, after SecurityEval's misses were counted by CWE.

Taint has three levels: WEB (request data, and the parameters a web framework fills), USER
(``input()``, ``sys.argv``, the environment, stdin) and PARAM (a plain function's parameter).
Sinks dangerous for any caller-supplied value (shell, eval/exec, SQL/LDAP/XPath text,
deserialisation, XML, templates) fire on PARAM; paths, URLs, redirects, HTML need WEB.
A plain function's parameter that the function itself *declares* untrusted — by its name
(``user_input``, ``untrusted_xml``, ``user_url``) or its docstring ("the user-provided file
name", ":param path: supplied by the client") — is WEB input too: the author has stated the
trust boundary, which is how task-style code (the shape of fine-tuning data) says it.
Rules that need no data flow live in ``emlab.audit.patterns`` (EM1001-EM1505).

A value counts as *validated* when it appears in an ``if``/``while``/``assert`` test that
calls something or compares with ``in``/``==`` (an allow-list, ``startswith(base)``, a
``'..' in name`` check): path, redirect and request sinks fed only by validated values are
reported with LOW confidence, which the default thresholds do not count.
"""

from __future__ import annotations

import ast
import re
import string
from dataclasses import dataclass, field

from emlab.audit.finding import Finding, dotted_name

# -------------------------------------------------------------- sources and sanitisers

_WEB_ATTRS = {"args", "form", "values", "cookies", "headers", "files", "json", "data",
              "get_json", "get_data", "GET", "POST", "FILES", "COOKIES", "META", "body",
              "query_params", "query_string", "stream", "view_args", "path_params", "params",
              "query", "forms", "match_info", "matchdict", "json_body", "arguments",
              "query_arguments", "body_arguments"}
_REQUEST_NAMES = {"request", "req", "flask_request"}
# Tornado's RequestHandler reads the request through its own methods (self.get_argument(...))
_HANDLER_INPUTS = {"get_argument", "get_arguments", "get_query_argument", "get_query_arguments",
                   "get_body_argument", "get_body_arguments", "get_cookie"}
# class-based views (Django View/APIView/ViewSet, Flask MethodView/Resource, Tornado
# RequestHandler): a class whose base is named so, and its methods that answer a request
_VIEW_BASES = re.compile(r"(View|ViewSet|RequestHandler|Resource)$")
_VIEW_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "list", "retrieve",
                 "create", "update", "partial_update", "destroy"}
_SANITISER_EXACT = {"int", "float", "bool", "len", "abs", "round", "basename", "quote",
                    "quote_plus", "urlencode", "secure_filename", "jsonify", "dumps",
                    "render_template", "url_for", "hexdigest", "uuid4", "isdigit", "isalnum",
                    "literal_eval", "get_or_404", "first_or_404", "render",
                    "render_template_string", "render_to_string", "TemplateResponse"}
_SANITISER_PARTS = ("escape", "saniti", "clean", "bleach", "purify", "validate")
_ROUTE_ATTRS = {"route", "get", "post", "put", "delete", "patch", "api_route", "websocket"}
_SAFE_CONVERTERS = {"int", "float", "uuid"}

# -------------------------------------------------------------- sink tables

_PATH_FUNCS = {"open", "send_file", "remove", "unlink", "rmdir", "removedirs", "rmtree",
               "copy", "copyfile", "copy2", "copytree", "move", "rename", "replace", "listdir",
               "makedirs", "mkdir", "Path", "PurePath", "FileResponse", "save", "chmod",
               "chown", "scandir", "walk"}
_PATH_MODULES = {None, "os", "shutil", "io", "codecs", "pathlib", "flask", "os.path"}
_REDIRECT_FUNCS = {"redirect", "HttpResponseRedirect", "RedirectResponse"}
_FETCH_FUNCS = {("requests", "get"), ("requests", "post"), ("requests", "put"),
                ("requests", "delete"), ("requests", "head"), ("requests", "request"),
                ("urllib.request", "urlopen"), (None, "urlopen"), ("httpx", "get"),
                ("httpx", "post")}
_RESPONSE_FUNCS = {"make_response", "Response", "HttpResponse", "HTMLResponse"}
_TEMPLATE_STRING_FUNCS = {"render_template_string", "Markup", "mark_safe"}
_OS_SHELL = {"system", "popen", "popen2", "popen3", "popen4"}
_SUBPROCESS = {"run", "call", "check_call", "check_output", "Popen", "getoutput",
               "getstatusoutput"}
_LDAP_SEARCH = {"search", "search_s", "search_st", "search_ext", "search_ext_s",
                "search_sub_tree", "paged_search"}
_RE_ALL = {"compile", "match", "search", "fullmatch", "findall", "finditer", "sub", "subn",
           "split"}

_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "critical", "exception", "log"}
_MONGO_METHODS = {"find", "find_one", "find_one_and_update", "find_one_and_delete",
                  "find_one_and_replace", "update_one", "update_many", "delete_one", "delete_many",
                  "replace_one", "count_documents", "aggregate", "distinct"}
_HTML_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*[\s>/]|<!DOCTYPE", re.I)
# A statement keyword in capitals, or a statement's shape in any case ("select x from",
# "update t set"): English that opens with the word ("Update of type {} ...") is not SQL.
_SQL_START = re.compile(r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|MERGE|UPSERT|CREATE|"
                        r"DROP|ALTER|TRUNCATE|GRANT|PRAGMA|EXEC)\b|"
                        r"(?i:^\s*\(?\s*(select\b[\s\S]*\bfrom\b|insert\s+(or\s+\w+\s+)?into\b|"
                        r"update\s+[\w.`\"\[\]]+\s+set\b|delete\s+from\b|replace\s+into\b|"
                        r"merge\s+into\b|upsert\b|(create|drop)\s+(\w+\s+)?(table|index|view|"
                        r"database|schema|trigger|user)\b|alter\s+(table|user|database)\b|"
                        r"truncate\s+(table\s+)?[\w.`\"]+\s*;?\s*$|grant\s+[\w,\s]+\s+on\b|"
                        r"pragma\s+\w+))")
_SQL_ANY = re.compile(r"\b(SELECT\b[\s\S]*\bFROM|INSERT\s+INTO|UPDATE\b[\s\S]*\bSET|DELETE\s+FROM|"
                      r"WHERE\b[\s\S]*[=<>]|VALUES\s*\()")
_PLACEHOLDER = re.compile(r"^[\s,()]*(\?|%s|:\w+|\$\d+)[\s,()]*$")
_TLDS = ("com|org|net|io|edu|gov|mil|co|uk|de|fr|us|ca|au|jp|cn|ru|in|br|info|biz|app|dev|"
         "me|ly|tv|ai|xyz|site|online|cloud|local|internal|example|test")
_HOST_TAIL = re.compile(rf"({_TLDS})(?![A-Za-z0-9])")
_HOSTNAME = re.compile(rf"^(https?://)?([\w-]+\.)+({_TLDS})(:\d+)?/?$", re.I)
_RE_FUNCS = {"compile", "match", "search", "fullmatch"}  # validation, not text rewriting
_ENTITY = re.compile(r"&(lt|gt|quot|amp|#\d+|#x[0-9a-f]+);", re.I)


PARAM, USER, WEB = 1, 2, 3


@dataclass(frozen=True)
class Taint:
    """Where a value came from: the lines on its path, and whether a web request is a source."""

    lines: frozenset[int]
    level: int   # WEB (a request), USER (input(), argv, environment), PARAM (a parameter)

    @property
    def web(self) -> bool:
        return self.level >= WEB

    def __or__(self, other: "Taint | None") -> "Taint":
        if other is None:
            return self
        return Taint(self.lines | other.lines, max(self.level, other.level))


def _union(*ts: Taint | None) -> Taint | None:
    out = None
    for t in ts:
        if t is not None:
            out = t if out is None else out | t
    return out


_dotted = dotted_name


def _func_parts(call: ast.Call) -> tuple[str | None, str | None]:
    """(receiver as dotted text or None, function name) of a call."""
    f = call.func
    if isinstance(f, ast.Name):
        return None, f.id
    if isinstance(f, ast.Attribute):
        return _dotted(f.value), f.attr
    return None, None


def call_args(call: ast.Call) -> list[ast.AST]:
    return list(call.args) + [k.value for k in call.keywords]


def _is_sanitiser(name: str | None) -> bool:
    if not name:
        return False
    low = name.lower()
    return name in _SANITISER_EXACT or any(p in low for p in _SANITISER_PARTS)


def _const_str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


# -------------------------------------------------------------- string building

# A value formatted as a number (``{:.2f}``, ``%d``, ``f"{n:x}"``) is digits, whatever it came
# from (a string would raise): like ``int()``, that hole carries no text into a sink. ``c`` (a
# character from an int) and ``!r``/``!s`` conversions are text.
_NUMERIC_SPEC = re.compile(r"[bdoxXneEfFgG%]$")
_PERCENT = re.compile(r"%(\([^)]*\))?[#0\- +]*(\*|\d+)?(\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def _percent_numeric(fmt: str, n_args: int) -> list[bool] | None:
    """Per positional argument of ``fmt % args``: formatted as a number? None if unsure."""
    specs = [m for m in _PERCENT.finditer(fmt) if m.group(5) != "%"]
    # a mapping key (%(name)s) or a * width takes its value elsewhere: unsure
    if len(specs) != n_args or any(m.group(1) or "*" in m.group(0) for m in specs):
        return None
    return [m.group(5) in "diouxXeEfFgG" for m in specs]


def _format_numeric(fmt: str) -> tuple[set[int], set[str]] | None:
    """Positions and names that ``fmt.format(...)`` only formats as numbers; None if unsure."""
    try:
        fields = [f for f in string.Formatter().parse(fmt) if f[1] is not None]
    except ValueError:
        return None
    auto, uses = 0, {}
    for _, name, spec, conv in fields:
        key: int | str
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base == "":
            key, auto = auto, auto + 1
        else:
            key = int(base) if base.isdigit() else base
        numeric = conv is None and "{" not in (spec or "") and bool(_NUMERIC_SPEC.search(spec or ""))
        uses[key] = uses.get(key, True) and numeric  # numeric only if every use is
    return ({k for k, v in uses.items() if v and isinstance(k, int)},
            {k for k, v in uses.items() if v and isinstance(k, str)})


def _fstring_numeric(v: ast.FormattedValue) -> bool:
    spec = v.format_spec
    if v.conversion != -1 or not isinstance(spec, ast.JoinedStr) or \
            not all(isinstance(x, ast.Constant) for x in spec.values):
        return False
    return bool(_NUMERIC_SPEC.search("".join(str(x.value) for x in spec.values)))


def text_holes(node: ast.AST) -> list[ast.AST] | None:
    """The interpolated values of an f-string, ``const % args`` or ``const.format(...)`` that can
    put text into the result (numeric fields left out); None for other expressions."""
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values
                if isinstance(v, ast.FormattedValue) and not _fstring_numeric(v)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _const_str(node.left):
        r = node.right
        holes = list(r.elts) if isinstance(r, ast.Tuple) else [r]
        numeric = _percent_numeric(_const_str(node.left), len(holes))
        return holes if numeric is None else [h for h, n in zip(holes, numeric) if not n]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format" and _const_str(node.func.value) is not None):
        numeric = _format_numeric(_const_str(node.func.value)) or (set(), set())
        return ([a for i, a in enumerate(node.args) if i not in numeric[0]]
                + [k.value for k in node.keywords if k.arg not in numeric[1]])
    return None

@dataclass
class Built:
    """A string built from constant text and holes (f-string, %, .format, +)."""

    text: str                       # constant parts, holes written as "{}"
    holes: list[ast.AST] = field(default_factory=list)


def _built_string(node: ast.AST) -> Built | None:
    """The constant text and interpolated values of a string-building expression, or None."""
    if isinstance(node, ast.JoinedStr):
        b = Built("", text_holes(node) or [])
        for v in node.values:
            b.text += "{}" if isinstance(v, ast.FormattedValue) else (_const_str(v) or "")
        return b if b.holes else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _const_str(node.left):
        holes = text_holes(node) or []
        return Built(_const_str(node.left), holes) if holes else None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format" and _const_str(node.func.value) is not None):
        holes = text_holes(node) or []
        return Built(_const_str(node.func.value), holes) if holes else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts: list[ast.AST] = []

        def flat(n: ast.AST) -> None:
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
                flat(n.left)
                flat(n.right)
            else:
                parts.append(n)
        flat(node)
        if not any(_const_str(p) is not None or isinstance(p, ast.JoinedStr) for p in parts):
            return None
        b = Built("")
        for p in parts:
            s = _const_str(p)
            if s is not None:
                b.text += s
            elif isinstance(p, ast.JoinedStr):
                inner = _built_string(p)
                if inner:
                    b.text += inner.text
                    b.holes += inner.holes
                else:
                    b.text += "".join(_const_str(v) or "" for v in p.values)
            else:
                b.text += "{}"
                b.holes.append(p)
        return b if b.holes else None
    return None


# -------------------------------------------------------------- the analysis

class _FunctionScan:
    """Taint analysis of one function body (or the module's top level)."""

    def __init__(self, rules: "_Rules", body: list[ast.stmt], params: dict[str, int],
                 is_route: bool, fn: ast.AST | None = None):
        self.r = rules
        self.is_route = is_route
        self.fn = fn
        self.taint: dict[str, Taint] = {}
        self.html: dict[str, Taint] = {}        # names holding HTML built from tainted values
        self.placeholders: set[str] = set()     # names holding "?, ?, ?" lists for SQL
        self.built: dict[str, Taint] = {}       # names holding text built from tainted parts
        self.built_text: dict[str, str] = {}    # ... and the constant text around the parts
        self.bounded: set[str] = set()          # names assigned through min(...)
        self.numeric: dict[str, Taint] = {}     # names holding int(request data): a size, not text
        self.one_line: set[str] = set()         # names whose line breaks were taken out
        self.try_seen: list[dict[str, Taint]] = []  # per enclosing try: taints seen in its body
        for name, level in params.items():
            self.taint[name] = Taint(frozenset(), level)
        self.validated = self._validated_names(body)
        self.allow_listed = _validated_in(_walk_scope(body), _VALIDATOR)
        self.body = body

    @staticmethod
    def _validated_names(body: list[ast.stmt]) -> set[str]:
        return _validated_in(_walk_scope(body))

    # ---------------------------------------------------------- expression taint

    def expr(self, node: ast.AST | None) -> Taint | None:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return self.taint.get(node.id)
        if isinstance(node, ast.Attribute):
            root = node
            while isinstance(root, ast.Attribute):
                if root.attr in _WEB_ATTRS and _is_request(root.value):
                    return Taint(frozenset({node.lineno}), WEB)
                root = root.value
            if _dotted(node) in ("sys.argv", "os.environ"):
                return Taint(frozenset({node.lineno}), USER)
            return self.expr(node.value)
        if isinstance(node, ast.Subscript):
            return self.expr(node.value)
        if isinstance(node, ast.Call):
            recv, name = _func_parts(node)
            if _is_sanitiser(name):
                return None
            if name == "replace" and any(_ENTITY.search(_const_str(a) or "") for a in call_args(node)):
                return None  # hand-written HTML escaping: .replace("<", "&lt;")
            if name == "input" and recv is None:
                return Taint(frozenset({node.lineno}), USER)
            if name in _HANDLER_INPUTS and recv == "self":
                return Taint(frozenset({node.lineno}), WEB)
            if name in ("getenv", "getpass") or recv in ("os.environ", "sys.stdin"):
                return Taint(frozenset({node.lineno}), USER)
            holes = text_holes(node)  # "...{:.2f}".format(x): numeric fields carry no text
            if holes is not None:
                return _union(*(self.expr(h) for h in holes))
            parts = [self.expr(a) for a in call_args(node)]
            if isinstance(node.func, ast.Attribute):
                parts.append(self.expr(node.func))  # request.get_json(), name.strip()
            return _union(*parts)
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.BinOp) and
                                               isinstance(node.op, ast.Mod) and _const_str(node.left)):
            return _union(*(self.expr(h) for h in text_holes(node) or []))
        if isinstance(node, ast.FormattedValue):
            return self.expr(node.value)
        if isinstance(node, ast.BinOp):
            return _union(self.expr(node.left), self.expr(node.right))
        if isinstance(node, ast.BoolOp):
            return _union(*(self.expr(v) for v in node.values))
        if isinstance(node, ast.IfExp):
            return _union(self.expr(node.body), self.expr(node.orelse))
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return _union(*(self.expr(e) for e in node.elts))
        if isinstance(node, ast.Dict):
            return _union(*(self.expr(v) for v in node.values))
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            return _union(self.expr(node.elt), *(self.expr(g.iter) for g in node.generators))
        if isinstance(node, ast.DictComp):
            return _union(self.expr(node.value), *(self.expr(g.iter) for g in node.generators))
        if isinstance(node, (ast.Starred, ast.Await)):
            return self.expr(node.value)
        if isinstance(node, ast.NamedExpr):
            return self.expr(node.value)
        return None

    def _html_built(self, node: ast.AST) -> Taint | None:
        """Taint of ``node`` when it is HTML text built from tainted values."""
        b = _built_string(node)
        if b is not None and _HTML_TAG.search(b.text):
            return _union(*(self.expr(h) for h in b.holes))
        if isinstance(node, ast.Name):
            return self.html.get(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return _union(self._html_built(node.left), self._html_built(node.right))
        return None

    # ---------------------------------------------------------- statements

    def run(self) -> None:
        self.block(self.body)

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, s: ast.stmt) -> None:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return  # scanned on its own
        for e in _header_exprs(s):
            self.sinks(e)
        if isinstance(s, ast.Return) and s.value is not None:
            self.return_sink(s)
        if isinstance(s, ast.Assign):
            for t in s.targets:
                self.assign(t, s.value, s.lineno)
        elif isinstance(s, ast.AnnAssign) and s.value is not None:
            self.assign(s.target, s.value, s.lineno)
        elif isinstance(s, ast.AugAssign):
            if isinstance(s.target, ast.Name):
                name = s.target.id
                t = _union(self.taint.get(name), self.expr(s.value))
                if t is not None:
                    self.taint[name] = t | Taint(frozenset({s.lineno}), t.level)
                h = _union(self.html.get(name), self._html_built(s.value))
                if h is not None:
                    self.html[name] = h | Taint(frozenset({s.lineno}), h.level)
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            t = self.expr(s.iter)
            for n in _target_names(s.target):
                if t is not None:
                    self.taint[n] = t | Taint(frozenset({s.lineno}), t.level)
                else:
                    self.taint.pop(n, None)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, item.context_expr, s.lineno)
        if getattr(s, "handlers", None):
            self.try_seen.append(dict(self.taint))  # every taint a name has during the body
        for field_name in ("body", "orelse", "finalbody"):
            if field_name != "body" and getattr(s, "handlers", None):
                continue  # a try's else/finally: after its handlers, below
            sub = getattr(s, field_name, None)
            if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                self.block(sub)
        if getattr(s, "handlers", None):
            # the body may have failed anywhere: a handler sees any value a name had in it
            seen = self.try_seen.pop()
            for name, t in seen.items():
                self.taint[name] = _union(self.taint.get(name), t)
                self.one_line.discard(name)
        for h in getattr(s, "handlers", []) or []:
            self.block(h.body)
        if getattr(s, "handlers", None):
            for field_name in ("orelse", "finalbody"):
                if getattr(s, field_name, None):
                    self.block(getattr(s, field_name))
        for case in getattr(s, "cases", []) or []:
            self.block(case.body)

    def assign(self, target: ast.AST, value: ast.AST, lineno: int) -> None:
        t = self.expr(value)
        h = self._html_built(value)
        placeholder = any(_PLACEHOLDER.match(c) for c in
                          (_const_str(n) for n in ast.walk(value)) if c)
        names = _target_names(target)
        if isinstance(target, ast.Subscript) and t is not None and t.web and \
                (_dotted(target.value) or "").split(".")[-1] == "headers":
            key = _const_str(target.slice) or ""
            if key.lower() not in ("location",) and not self._single_line(value):
                self.report("EM404", target, t, "MEDIUM", "MEDIUM")
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            base = target
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name) and t is not None:  # d['k'] = tainted taints d
                self.taint[base.id] = _union(self.taint.get(base.id), t)
            return
        for n in names:
            if t is not None:
                self.taint[n] = t | Taint(frozenset({lineno}), t.level)
                for seen in self.try_seen:
                    seen[n] = _union(seen.get(n), self.taint[n])
            else:
                self.taint.pop(n, None)
            if h is not None:
                self.html[n] = h | Taint(frozenset({lineno}), h.level)
            else:
                self.html.pop(n, None)
            if placeholder:
                self.placeholders.add(n)
            else:
                self.placeholders.discard(n)
            b = _built_string(value)
            bt = _union(*(self.expr(x) for x in b.holes)) if b is not None else None
            if bt is not None:
                self.built[n] = bt
                self.built_text[n] = b.text
            else:
                self.built.pop(n, None)
            if self._newlines_removed(value):
                self.one_line.add(n)
            else:
                self.one_line.discard(n)
            nt = self._amount(value)
            if nt is not None:
                self.numeric[n] = nt
            else:
                self.numeric.pop(n, None)
            if any(isinstance(c, ast.Call) and _func_parts(c)[1] in ("min", "clamp")
                   for c in ast.walk(value)):
                self.bounded.add(n)
            else:
                self.bounded.discard(n)

    # ---------------------------------------------------------- sinks

    def report(self, test_id: str, node: ast.AST, evidence: Taint | None, severity: str,
               confidence: str) -> None:
        end = getattr(node, "end_lineno", None) or node.lineno
        lines = set(range(node.lineno, end + 1)) | (set(evidence.lines) if evidence else set())
        self.r.add(test_id, node.lineno, severity, confidence, tuple(sorted(lines)))

    def return_sink(self, s: ast.Return) -> None:
        v = s.value
        if not self.is_route:   # a plain function: HTML it builds from declared-untrusted input
            h = self._html_built(v) if v is not None else None
            if h is not None and h.web:
                self.report("EM101", s, h, "MEDIUM", "HIGH")
            return
        h = self._html_built(v)
        if h is not None:
            self.report("EM101", s, h, "MEDIUM", "HIGH")
            return
        if (isinstance(v, (ast.Name, ast.Subscript, ast.Attribute, ast.JoinedStr, ast.BinOp))
                or _built_string(v) is not None):
            t = self.expr(v)
            if t is not None and t.web:
                self.report("EM102", s, t, "MEDIUM", "MEDIUM")

    def sinks(self, e: ast.AST) -> None:
        for node in ast.walk(e):
            if isinstance(node, ast.Call):
                self.call_sink(node)
            elif isinstance(node, ast.Compare):
                self.r.substring_check(node)
            elif isinstance(node, ast.BinOp):
                self.binop_sink(node)
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call) and \
                    _func_parts(node.value)[1] in ("globals", "locals", "vars") and \
                    not node.value.args:
                t = self.expr(node.slice)
                if t is not None and t.level >= USER:
                    self.report("EM504", node, t, "MEDIUM", "MEDIUM")
            b = _built_string(node) if isinstance(node, (ast.JoinedStr, ast.BinOp, ast.Call)) else None
            if b is not None:
                self.sql_sink(node, b)

    def sql_sink(self, node: ast.AST, b: Built) -> None:
        text = b.text
        if not (_SQL_START.search(text) or _SQL_ANY.search(text)):
            return
        holes = [h for h in b.holes
                 if not (isinstance(h, ast.Name) and h.id in self.placeholders)
                 and not isinstance(h, ast.Constant)]
        if not holes:
            return
        t = _union(*(self.expr(h) for h in holes))
        names = {n.id for h in holes for n in ast.walk(h) if isinstance(n, ast.Name)}
        if names and names <= self.allow_listed and all(
                isinstance(h, ast.Name) for h in holes):  # checked against an allow-list
            self.report("EM201", node, t, "MEDIUM", "LOW")
            return
        self.report("EM201", node, t, "MEDIUM", "HIGH" if t is not None else "MEDIUM")

    def call_sink(self, call: ast.Call) -> None:
        recv, name = _func_parts(call)
        first = call.args[0] if call.args else None
        handler_write = name in ("write", "finish") and recv == "self" and self.is_route
        if (name in _RESPONSE_FUNCS or handler_write) and first is not None:  # Tornado: self.write
            h = self._html_built(first)
            if h is not None:
                self.report("EM101", call, h, "MEDIUM", "HIGH")
            else:
                t = self.expr(first)
                if t is not None and t.web:
                    self.report("EM102", call, t, "MEDIUM", "MEDIUM")
        elif name in _TEMPLATE_STRING_FUNCS and first is not None:
            t = _union(self._html_built(first), self.expr(first))
            if t is not None:
                self.report("EM104", call, t, "HIGH", "HIGH")
        if name in _PATH_FUNCS and (recv in _PATH_MODULES or name in ("save", "Path")):
            arg = first
            if name == "save" or arg is None:
                arg = first if first is not None else next(
                    (k.value for k in call.keywords if k.arg in ("dst", "path", "file")), None)
            t = self.expr(arg) if arg is not None else None
            if name == "chmod" and recv is not None and recv not in ("os",):
                t = None
            if t is not None and t.web:
                self.report("EM301", call, t, "HIGH", self._confidence(arg))
        if name in _REDIRECT_FUNCS and first is not None:
            t = self.expr(first)
            if t is not None and t.web:
                self.report("EM401", call, t, "MEDIUM", self._confidence(first))
        if (recv, name) in _FETCH_FUNCS or (name == "urlopen"):
            arg = first if first is not None else next(
                (k.value for k in call.keywords if k.arg == "url"), None)
            t = self.expr(arg) if arg is not None else None
            if t is not None and t.web:
                self.report("EM402", call, t, "MEDIUM", self._confidence(arg))

        self.more_sinks(call, recv, name, first)

    def _arg(self, call: ast.Call, pos: int, *names: str) -> ast.AST | None:
        for k in call.keywords:
            if k.arg in names:
                return k.value
        return call.args[pos] if len(call.args) > pos else None

    def _built_taint(self, node: ast.AST | None) -> Taint | None:
        """Taint of a string built (f-string, %, format, +) with a non-constant part, or of a
        tainted value itself."""
        if node is None:
            return None
        b = _built_string(node)
        if b is not None:
            t = _union(*(self.expr(h) for h in b.holes))
            return t
        if isinstance(node, ast.Name) and node.id in self.built:
            return self.built[node.id]
        return self.expr(node)

    def more_sinks(self, call: ast.Call, recv: str | None, name: str | None,
                   first: ast.AST | None) -> None:
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        # OS command injection: a shell runs text built from input
        shell = isinstance(kw.get("shell"), ast.Constant) and kw["shell"].value is True
        if ((recv == "os" and name in _OS_SHELL) or (recv == "commands")
                or (recv == "subprocess" and name in ("getoutput", "getstatusoutput"))
                or (recv == "subprocess" and name in _SUBPROCESS and shell)
                or (recv == "pty" and name == "spawn")):
            arg = first if first is not None else kw.get("args") or kw.get("cmd")
            t = self._built_taint(arg)
            if t is not None:
                self.report("EM501", call, t, "HIGH", "HIGH" if t.level >= USER else "MEDIUM")
        if recv == "os" and name and name.startswith(("execl", "execv", "spawn")) and call.args:
            t = _union(*(self.expr(a) for a in call.args[:2]))
            if t is not None and t.level >= USER:
                self.report("EM501", call, t, "HIGH", "MEDIUM")
        # code injection: eval/exec of non-constant text, dynamic imports from the request
        if recv is None and name in ("eval", "exec", "compile") and first is not None \
                and _const_str(first) is None:
            t = self.expr(first)
            conf = "HIGH" if t is not None else "MEDIUM"
            if _code_allow_listed(list(_walk_scope(self.body)), first):
                conf = "LOW"   # reported, not counted: the text was checked against an allow-list
            self.report("EM502", call, t, "HIGH", conf)
        if ((recv == "importlib" and name == "import_module") or (recv is None and name == "__import__")) \
                and first is not None:
            t = self.expr(first)
            if t is not None and t.level >= USER:
                self.report("EM503", call, t, "HIGH", "HIGH")
        # template compiled from input (SSTI)
        if first is not None and ((name == "Template" and recv in (None, "jinja2", "mako.template"))
                                  or name == "from_string"):
            t = self.expr(first)
            if t is not None:  # a parameter alone: often the function's purpose, so LOW
                self.report("EM105", call, t, "HIGH", "HIGH" if t.level >= USER else "LOW")
        # |safe or autoescape off inside a template string rendered with request data
        if name == "render_template_string" and first is not None:
            text = _const_str(first) or ""
            if re.search(r"\|\s*safe\b|autoescape\s+(false|off)", text, re.I) and (
                    call.keywords or len(call.args) > 1):
                self.report("EM106", call, None, "MEDIUM", "HIGH")
        # LDAP filter text built from input
        if name in _LDAP_SEARCH:
            filt = self._arg(call, 2 if name.endswith("_s") or name.startswith("search_") else 1,
                             "filterstr", "search_filter", "filter")
            b = _built_string(filt) if filt is not None else None
            t = self._built_taint(filt)
            if t is not None and (b is not None or (isinstance(filt, ast.Name) and filt.id in self.built)
                                  or (t.level >= USER and "ldap" in self.r.source.lower())):
                self.report("EM202", call, t, "HIGH", "HIGH")   # (a regex's .search is no LDAP)
        # XPath built from input
        if name in ("xpath", "XPath", "evaluate") and first is not None and not call.keywords[1:]:
            b = _built_string(first)
            if b is not None or (isinstance(first, ast.Name) and first.id in self.built):
                t = self._built_taint(first)
                if t is not None:
                    self.report("EM203", call, t, "HIGH", "HIGH")
        if name in ("find", "findall", "iterfind", "findtext") and first is not None:
            b = _built_string(first)
            text = b.text if b is not None else ""
            if isinstance(first, ast.Name) and first.id in self.built:
                text = self.built_text.get(first.id, "")
            if re.search(r"\[@|^\.?//?\w", text):
                t = self._built_taint(first)
                if t is not None:
                    self.report("EM203", call, t, "HIGH", "HIGH")
        # regular expression taken from user input (ReDoS / regex injection)
        if recv in ("re", "regex") and name in _RE_ALL and first is not None:
            t = self.expr(first)
            if t is not None and t.level >= USER:
                self.report("EM204", call, t, "MEDIUM", "HIGH")
        # XML parsed by a parser that resolves entities / expands entity bombs
        xml_mod = self.r.xml_module(recv, name)
        if xml_mod is not None:
            arg = first if first is not None else kw.get("source") or kw.get("text")
            if arg is not None and _const_str(arg) is None:
                t = self.expr(arg)
                self.report("EM902", call, t, "MEDIUM", "HIGH" if t is not None else "MEDIUM")
        # resource amounts taken from the request without a bound
        if recv is None and name == "range" and call.args:
            t = _union(*(self._amount(a) for a in call.args))
            if t is not None and t.web and not self._bounded(call):
                self.report("EM403", call, t, "MEDIUM", "MEDIUM")
        if name == "read" and not call.args and not call.keywords and isinstance(call.func, ast.Attribute):
            body = call.func.value  # request.stream.read(), self.request.body.read()
            if isinstance(body, ast.Attribute) and body.attr in ("stream", "body") and \
                    _is_request(body.value):
                self.report("EM403", call, None, "MEDIUM", "MEDIUM")

        self.late_sinks(call, recv, name, first, kw)

    def _single_line(self, node: ast.AST) -> bool:
        """Can the value hold no line break: neutralised here, or only names that were?"""
        if self._newlines_removed(node):
            return True
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        tainted = {n for n in names if n in self.taint}
        return bool(tainted) and tainted <= self.one_line

    @staticmethod
    def _newlines_removed(node: ast.AST) -> bool:
        """Were line breaks taken out of the value (``.replace('\\n', ...)``, ``re.sub`` of a
        newline, ``splitlines``, an ``isalnum``/``isdigit`` check) before it is written?"""
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                if n.func.attr == "replace" and n.args and (_const_str(n.args[0]) or "") in (
                        "\n", "\r", "\r\n"):
                    return True
                if n.func.attr in ("sub",) and any("\\n" in (_const_str(a) or "") or "\n" in
                                                   (_const_str(a) or "") for a in n.args[:1]):
                    return True
                if n.func.attr in ("splitlines", "isalnum", "isdigit"):
                    return True
        return False

    def late_sinks(self, call: ast.Call, recv: str | None, name: str | None,
                   first: ast.AST | None, kw: dict) -> None:
        # log injection: request data in a log record, line breaks kept
        logger = recv is not None and (recv.split(".")[-1].lower() in ("logging", "logger", "log",
                                                                       "_logger", "_log", "LOGGER")
                                       or recv.endswith("logger"))
        if logger and name in _LOG_METHODS:
            for a in call.args:
                t = self.expr(a)
                if t is not None and t.level >= USER and not self._single_line(a):
                    self.report("EM405", call, t, "MEDIUM", "MEDIUM")
                    break
        # header injection: a header value from the request
        on_headers = bool(recv) and recv.split(".")[-1] == "headers" and name in ("add", "set")
        if (on_headers or name in ("add_header", "set_header", "putheader")) and len(call.args) >= 2:
            key = (_const_str(call.args[0]) or "").lower()
            t = self.expr(call.args[1])
            if t is not None and t.web and key != "location" and not self._single_line(call.args[1]):
                self.report("EM404", call, t, "MEDIUM", "MEDIUM")
        if name in _RESPONSE_FUNCS and isinstance(kw.get("headers"), ast.Dict):
            t = _union(*(self.expr(v) for v in kw["headers"].values))
            if t is not None and t.web:
                self.report("EM404", call, t, "MEDIUM", "MEDIUM")
        # NoSQL injection: a whole query document from the request, or $where built from input
        if name in _MONGO_METHODS and recv and recv.split(".")[0] not in ("re", "os", "str", "self") \
                and first is not None:
            t = self.expr(first)
            if t is not None and t.web and not isinstance(first, ast.Dict):
                self.report("EM205", call, t, "HIGH", "MEDIUM")
            for d in ast.walk(first):
                if isinstance(d, ast.Dict):
                    for k, v in zip(d.keys, d.values):
                        if _const_str(k) in ("$where", "$function", "$accumulator", "$expr") and \
                                _const_str(v) is None:
                            tv = self._built_taint(v)
                            if tv is not None:
                                self.report("EM205", call, tv, "HIGH", "HIGH")
        # DynamoDB expressions built from input (the values belong in ExpressionAttributeValues)
        for k in ("FilterExpression", "KeyConditionExpression", "ConditionExpression",
                  "UpdateExpression", "ProjectionExpression"):
            v = kw.get(k)
            if v is not None and (_built_string(v) is not None or
                                  (isinstance(v, ast.Name) and v.id in self.built)):
                t = self._built_taint(v)
                if t is not None:
                    self.report("EM205", call, t, "HIGH", "HIGH")
        # unsafe reflection: getattr / globals() by a name the user gives
        if recv is None and name == "getattr" and len(call.args) >= 2:
            t = self.expr(call.args[1])
            if t is not None and t.level >= USER:
                self.report("EM504", call, t, "MEDIUM", "MEDIUM")
        # mass assignment: Model(**request.json), obj.__dict__.update(request.form)
        starred = [k.value for k in call.keywords if k.arg is None]
        if starred and name and name[:1].isupper():
            t = _union(*(self.expr(v) for v in starred))
            if t is not None and t.web:
                self.report("EM505", call, t, "MEDIUM", "MEDIUM")
        if name == "update" and recv and recv.endswith("__dict__") and first is not None:
            t = self.expr(first)
            if t is not None and t.web:
                self.report("EM505", call, t, "MEDIUM", "MEDIUM")

    def _amount(self, node: ast.AST) -> Taint | None:
        """Taint of a number taken from input: int()/float() sanitise text, not a size."""
        if isinstance(node, ast.Name):
            return self.numeric.get(node.id) or self.expr(node)
        if isinstance(node, ast.Call) and _func_parts(node)[1] in ("int", "float") and node.args:
            return self.expr(node.args[0])
        return self.expr(node)

    def _bounded(self, call: ast.Call) -> bool:
        return any(isinstance(n, ast.Call) and _func_parts(n)[1] in ("min", "clamp")
                   for n in ast.walk(call))

    def binop_sink(self, node: ast.BinOp) -> None:
        """``'x' * n`` / ``[0] * n`` with n from the request: memory the client decides."""
        if not isinstance(node.op, ast.Mult):
            return
        for seq, n in ((node.left, node.right), (node.right, node.left)):
            if isinstance(seq, (ast.Constant, ast.List)) and not (
                    isinstance(seq, ast.Constant) and not isinstance(seq.value, (str, bytes))):
                t = self._amount(n)
                if t is not None and t.web and not self._bounded_name(n):
                    self.report("EM403", node, t, "MEDIUM", "MEDIUM")

    def _bounded_name(self, n: ast.AST) -> bool:
        names = {x.id for x in ast.walk(n) if isinstance(x, ast.Name)}
        return bool(names & self.bounded)

    def _confidence(self, arg: ast.AST) -> str:
        names = {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
        # follow one level of assignment: a path built from a validated name
        if names & self.validated:
            return "LOW"
        return "HIGH"


_XML_PARSE = {"parse", "fromstring", "XML", "iterparse", "parseString", "XMLID",
              "fromstringlist", "make_parser"}


def _import_aliases(nodes) -> dict[str, str]:
    """Local name -> dotted module/object it was imported as (``ET`` -> ``xml.etree.ElementTree``)."""
    out: dict[str, str] = {}
    for n in nodes:
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.asname:
                    out[a.asname] = a.name
        elif isinstance(n, ast.ImportFrom) and n.module:
            for a in n.names:
                out[a.asname or a.name] = f"{n.module}.{a.name}"
    return out


_VALIDATOR = re.compile(r"valid|allow|whitelist|isidentifier|isalnum|isdigit|isnumeric|match",
                        re.I)


def _validated_in(nodes, validators: re.Pattern | None = None) -> set[str]:
    """Names tested by a check in an if/while/assert condition: ``in``/``==``/``!=``, or a call
    (any call; with ``validators``, only a call whose name matches it — for SQL text, an
    unrelated check such as ``if is_authorized(uid)`` does not make ``uid`` safe)."""
    names: set[str] = set()
    for n in nodes:
        if isinstance(n, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            for m in ast.walk(n.test):
                if (isinstance(m, ast.Call) and (validators is None or validators.search(
                        _func_parts(m)[1] or ""))) or (
                        isinstance(m, ast.Compare)
                        and any(isinstance(op, (ast.In, ast.NotIn, ast.Eq, ast.NotEq))
                                for op in m.ops)):
                    names |= {x.id for x in ast.walk(m) if isinstance(x, ast.Name)}
    return names


def _names(node: ast.AST) -> set[str]:
    return {x.id for x in ast.walk(node) if isinstance(x, ast.Name)}


def _code_allow_listed(nodes: list[ast.AST], text: ast.AST) -> bool:
    """Is the text given to eval/exec checked against an allow-list first? Either its syntax
    tree is walked and every node type tested (``for n in ast.walk(ast.parse(expr)): if not
    isinstance(n, ALLOWED): raise``), or the text must match an anchored character-class regex
    (``if not re.fullmatch(r"[0-9+*/() -]+", expr): raise``). A check that raises or returns
    is what makes it an allow-list; a mere ``try`` around eval is not."""
    names = _names(text)
    parsed = set(names)   # names holding ast.parse(...) of the text (or of a name it came from)
    for n in nodes:
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and \
                _func_parts(n.value)[1] == "parse" and _names(n.value) & names:
            parsed |= {t for tg in n.targets for t in _target_names(tg)}
    for n in nodes:
        if isinstance(n, (ast.For, ast.comprehension)) and isinstance(n.iter, ast.Call) and \
                _func_parts(n.iter)[1] in ("walk", "iter_child_nodes") and \
                (_names(n.iter) & parsed or any(_func_parts(c)[1] == "parse" and _names(c) & names
                                                for c in ast.walk(n.iter) if isinstance(c, ast.Call))):
            body = n.body if isinstance(n, ast.For) else n.ifs
            inner = [m for b in body for m in ast.walk(b)]
            if any(isinstance(m, ast.Call) and _func_parts(m)[1] == "isinstance" for m in inner) \
                    and (any(isinstance(m, (ast.Raise, ast.Return)) for m in inner)
                         or isinstance(n, ast.comprehension)):
                return True
        if isinstance(n, (ast.If, ast.Assert)):
            for c in ast.walk(n.test):
                if isinstance(c, ast.Call) and _func_parts(c)[0] in ("re", "regex") and \
                        _func_parts(c)[1] in ("fullmatch", "match", "search") and \
                        _names(c) & names and c.args:
                    pat = _const_str(c.args[0]) or ""
                    anchored = _func_parts(c)[1] == "fullmatch" or (
                        pat.startswith("^") or _func_parts(c)[1] == "match") and \
                        pat.rstrip().endswith(("$", "\\Z"))
                    guarded = isinstance(n, ast.Assert) or any(
                        isinstance(m, (ast.Raise, ast.Return)) for b in n.body + n.orelse
                        for m in ast.walk(b))
                    if anchored and guarded and "[" in pat:
                        return True
    return False


def _walk_scope(body: list[ast.stmt]):
    """Every node of a scope's statements, not descending into nested functions or classes."""
    todo = list(body)
    while todo:
        n = todo.pop()
        yield n
        for c in ast.iter_child_nodes(n):
            if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                todo.append(c)


def _target_names(t: ast.AST) -> list[str]:
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, (ast.Tuple, ast.List)):
        return [n for e in t.elts for n in _target_names(e)]
    if isinstance(t, ast.Starred):
        return _target_names(t.value)
    return []


def _header_exprs(s: ast.stmt) -> list[ast.AST]:
    """The expressions a statement evaluates itself (not those of nested statement bodies)."""
    if isinstance(s, (ast.If, ast.While)):
        return [s.test]
    if isinstance(s, (ast.For, ast.AsyncFor)):
        return [s.iter]
    if isinstance(s, (ast.With, ast.AsyncWith)):
        return [i.context_expr for i in s.items]
    if isinstance(s, ast.Try) or (hasattr(ast, "TryStar") and isinstance(s, ast.TryStar)):
        return []
    if isinstance(s, ast.Match):
        return [s.subject]
    return [n for n in ast.iter_child_nodes(s) if isinstance(n, ast.expr)]


_MESSAGES = {
    "EM101": ("html_from_user_input", 79,
              "HTML built by string interpolation of request data is sent unescaped (XSS)."),
    "EM102": ("user_input_as_response", 79,
              "Request data is returned as the response body unescaped (reflected XSS)."),
    "EM103": ("jinja2_autoescape_off", 79,
              "jinja2 template rendered with autoescape off: variables reach HTML unescaped."),
    "EM104": ("template_from_user_input", 1336,
              "A template or Markup string is built from request data (template injection / XSS)."),
    "EM201": ("sql_built_from_strings", 89,
              "SQL text is built by string formatting instead of query parameters (SQL injection)."),
    "EM301": ("user_input_in_path", 22,
              "Request data reaches a filesystem path without sanitising (path traversal)."),
    "EM302": ("tar_extract_unfiltered", 22,
              "Archive members extracted without a filter or name check (path traversal)."),
    "EM401": ("open_redirect", 601, "Redirect to a URL taken from the request (open redirect)."),
    "EM402": ("request_to_user_url", 918,
              "Server-side request to a URL taken from the request (SSRF)."),
    "EM601": ("bypassable_url_check", 20,
              "URL/host check that an attacker can bypass (unescaped '.', substring or prefix test)."),
    "EM701": ("unsafe_deserialisation", 502, "Unsafe deserialiser (arbitrary code on load)."),
    "EM801": ("world_writable_mode", 732, "File or directory created or set world-writable."),
    "EM901": ("xml_external_entities", 611, "XML parser resolves external entities (XXE)."),
    "EM105": ("template_compiled_from_input", 1336,
              "A template is compiled from caller/request-supplied text (server-side template injection)."),
    "EM106": ("template_marks_data_safe", 79,
              "A template string turns escaping off (|safe / autoescape false) for rendered data (XSS)."),
    "EM202": ("ldap_filter_from_input", 90,
              "An LDAP search filter is built from input without escape_filter_chars (LDAP injection)."),
    "EM203": ("xpath_from_input", 643,
              "An XPath expression is built from input instead of XPath variables (XPath injection)."),
    "EM204": ("regex_from_input", 730,
              "A regular expression is taken from user input unescaped (ReDoS / regex injection)."),
    "EM403": ("unbounded_resource_from_request", 400,
              "The request decides how much memory or work is spent, with no bound (DoS)."),
    "EM501": ("shell_command_from_input", 78,
              "A shell command line is built from input (OS command injection)."),
    "EM502": ("eval_of_dynamic_code", 95, "eval/exec of non-constant text (code injection)."),
    "EM503": ("dynamic_import_from_input", 94,
              "A module is imported by a name taken from input (code injection)."),
    "EM902": ("xml_parser_not_hardened", 611,
              "Untrusted XML parsed with the stdlib/lxml parser instead of defusedxml (XXE / entity expansion)."),
    "EM1001": ("broken_cipher_or_ecb", 327, "Broken cipher (DES/3DES/RC4/Blowfish) or ECB mode."),
    "EM1002": ("password_fast_hash", 916,
               "A password is hashed with a fast hash instead of a password KDF (bcrypt/scrypt/argon2/pbkdf2)."),
    "EM1003": ("random_for_secret", 338,
               "The random module (predictable) makes a token, key, password or id; use secrets."),
    "EM205": ("nosql_query_from_input", 943,
              "A MongoDB query document comes whole from the request, or $where is built from input."),
    "EM404": ("header_from_request", 113,
              "A response header is set from request data (header injection / response splitting)."),
    "EM405": ("log_injection", 117,
              "User input is written to a log with its line breaks (forged log entries)."),
    "EM504": ("unsafe_reflection", 470,
              "An attribute or global is looked up by a name taken from input."),
    "EM505": ("mass_assignment", 915,
              "An object is built or updated from a whole request dict (mass assignment)."),
    "EM1006": ("constant_iv_or_nonce", 1204,
               "A cipher's IV or nonce is a constant: equal plaintexts give equal ciphertexts."),
    "EM1007": ("constant_salt", 760, "A password hash or key derivation uses a constant salt."),
    "EM1008": ("literal_crypto_key", 321, "A cipher, MAC or JWT is keyed with a hard-coded literal."),
    "EM1009": ("rsa_pkcs1v15_encryption", 780,
               "RSA encryption with PKCS#1 v1.5 padding (padding-oracle attacks); use OAEP."),
    "EM1103": ("empty_password", 521, "An empty password is given to a connection or login."),
    "EM1104": ("password_stored_in_plain_text", 256,
               "A password is stored as typed (database, session or cookie), not hashed."),
    "EM1506": ("csrf_protection_off", 352, "CSRF protection is turned off for a view or the app."),
    "EM1507": ("cors_any_origin_with_credentials", 942,
               "CORS admits any origin and sends credentials."),
    "EM1508": ("check_then_use_race", 367,
               "os.access() is checked and the path used afterwards (time-of-check/time-of-use)."),
    "EM1509": ("client_controlled_authorization", 807,
               "An authorization decision rests on a cookie, header or argument the client sets."),
    "EM1005": ("jwt_without_verification", 347, "A JWT is decoded without verifying its signature."),
    "EM1101": ("hardcoded_credential", 798, "A credential (password, secret, key, token) is hard-coded."),
    "EM1102": ("password_compared_with_literal", 259, "A password is compared with a hard-coded literal."),
    "EM1201": ("certificate_check_disabled", 295,
               "TLS certificate / hostname / SSH host-key verification is turned off."),
    "EM1301": ("debug_mode_on", 489, "Debug mode is on (interactive debugger / detailed errors exposed)."),
    "EM1401": ("secret_logged", 532, "A secret (password, token, key) is written to a log or stdout."),
    "EM1501": ("admin_route_without_auth", 306,
               "An administrative route has no authentication or authorization check."),
    "EM1502": ("cookie_without_flags", 614,
               "A session/auth cookie is set without Secure and HttpOnly."),
    "EM1503": ("exception_details_to_client", 209,
               "Exception details (traceback, error text) are returned to the client."),
    "EM1504": ("timing_unsafe_compare", 208,
               "A signature/token is compared with == instead of hmac.compare_digest (timing attack)."),
    "EM1505": ("catastrophic_regex", 1333,
               "A regular expression with nested quantifiers (catastrophic backtracking, ReDoS)."),
}


class _Rules:
    def __init__(self, tree: ast.Module, lines: list[str]):
        self.tree = tree
        self.lines = lines
        self.source = "\n".join(lines)
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, int]] = set()
        self.nodes = list(ast.walk(tree))
        self.jinja_template_names = self._jinja_names(self.nodes)
        self.int_names = self._int_constants(self.nodes)
        self.tar_names = self._tar_names(self.nodes)
        self.validated = _validated_in(self.nodes)
        self.aliases = _import_aliases(self.nodes)
        self.constant_names, self.string_names = self._constants(self.nodes)
        from emlab.audit.patterns import PatternRules
        self.patterns = PatternRules(self)

    def module_of(self, recv: str | None, name: str | None) -> str:
        """The module a call's receiver (or a bare imported name) refers to, as imported."""
        if recv is None:
            return self.aliases.get(name or "", "").rpartition(".")[0]
        head, _, rest = recv.partition(".")
        base = self.aliases.get(head, head)
        return base + ("." + rest if rest else "")

    def xml_module(self, recv: str | None, name: str | None) -> str | None:
        """The unsafe XML module a parse call uses (stdlib xml or lxml, not defusedxml), or None."""
        if name not in _XML_PARSE:
            return None
        mod = self.module_of(recv, name)
        if mod.startswith("defusedxml"):
            return None
        if mod.startswith(("xml.etree", "xml.dom", "xml.sax", "lxml", "xml.parsers")):
            return mod
        return None

    def add(self, test_id: str, line: int, severity: str, confidence: str,
            evidence: tuple[int, ...] = ()) -> None:
        if (test_id, line) in self._seen:
            return
        self._seen.add((test_id, line))
        name, cwe, msg = _MESSAGES[test_id]
        code = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        self.findings.append(Finding("emlab", test_id, name, severity, confidence, cwe, line, msg,
                                     code[:157] + "..." if len(code) > 160 else code,
                                     evidence or (line,)))

    @staticmethod
    def _jinja_names(nodes: list[ast.AST]) -> set[str]:
        names = set()
        for n in nodes:
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "jinja2":
                for a in n.names:
                    if a.name in ("Template", "Environment"):
                        names.add(a.asname or a.name)
        return names

    @staticmethod
    def _int_constants(nodes: list[ast.AST]) -> dict[str, int]:
        """Names assigned one integer constant and nothing else (``mode = 0o777``)."""
        values: dict[str, set] = {}
        for n in nodes:
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    for name in _target_names(t):
                        v = n.value.value if isinstance(n.value, ast.Constant) else None
                        values.setdefault(name, set()).add(v if isinstance(v, int) else None)
        return {k: next(iter(v)) for k, v in values.items() if len(v) == 1 and None not in v}

    @staticmethod
    def _constants(nodes: list[ast.AST]) -> tuple[dict[str, list[bool]], dict[str, str]]:
        """(name -> is each value assigned to it a literal?, name -> its one literal string)."""
        from emlab.audit.patterns import _constant_bytes
        lit: dict[str, list[bool]] = {}
        text: dict[str, list] = {}
        for n in nodes:
            if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        lit.setdefault(t.id, []).append(_constant_bytes(n.value))
                        text.setdefault(t.id, []).append(_const_str(n.value))
        strings = {k: v[0] for k, v in text.items() if len(v) == 1 and isinstance(v[0], str)}
        return lit, strings

    @staticmethod
    def _tar_names(nodes: list[ast.AST]) -> set[str]:
        """Names bound to ``tarfile.open(...)`` (by assignment or ``with ... as``)."""
        names = set()
        for n in nodes:
            pairs = []
            if isinstance(n, ast.Assign):
                pairs = [(t, n.value) for t in n.targets]
            elif isinstance(n, (ast.With, ast.AsyncWith)):
                pairs = [(i.optional_vars, i.context_expr) for i in n.items if i.optional_vars]
            for t, v in pairs:
                if isinstance(v, ast.Call) and _dotted(v.func) in ("tarfile.open", "TarFile.open",
                                                                   "tarfile.TarFile"):
                    names.update(_target_names(t))
        return names

    def _int(self, node: ast.AST | None) -> int | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return self.int_names.get(node.id)
        return None

    def run(self) -> list[Finding]:
        scopes: list[tuple] = [(self.tree.body, {}, False, None)]
        views = {id(f) for c in self.nodes if isinstance(c, ast.ClassDef) and any(
                     _VIEW_BASES.search(_dotted(b) or "") for b in c.bases)
                 for f in c.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and f.name in _VIEW_METHODS}
        for n in self.nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params, is_route = _route_info(n, view_method=id(n) in views)
                scopes.append((n.body, params, is_route, n))
            elif isinstance(n, ast.ClassDef):
                scopes.append((n.body, {}, False, None))
        for body, params, is_route, fn in scopes:
            _FunctionScan(self, body, params, is_route, fn).run()
        for n in self.nodes:
            if isinstance(n, ast.Call):
                self.pattern_call(n)
        self.patterns.run()
        return self.findings

    # ---------------------------------------------------------- pattern rules

    def pattern_call(self, call: ast.Call) -> None:
        recv, name = _func_parts(call)
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        # jinja2 autoescape off
        if name in ("Template", "Environment") and (recv == "jinja2" or
                                                    (recv is None and name in self.jinja_template_names)):
            ae = kw.get("autoescape")
            if isinstance(ae, ast.Constant) and ae.value is False:
                self.add("EM103", call.lineno, "HIGH", "HIGH")
            elif ae is None and name == "Template":
                self.add("EM103", call.lineno, "MEDIUM", "MEDIUM")
        # regex with an unescaped host dot
        if name in _RE_FUNCS and recv in ("re", "regex"):
            pat = _const_str(call.args[0]) if call.args else _const_str(kw.get("pattern", ast.Constant(None)))
            if pat is not None and _unescaped_host_dot(pat):
                self.add("EM601", call.lineno, "MEDIUM", "HIGH")
        # endswith/startswith host checks without a boundary
        if name in ("endswith", "startswith") and call.args:
            s = _const_str(call.args[0])
            if s and _HOSTNAME.match(s):
                if name == "endswith" and not s.startswith((".", "/", "@")):
                    self.add("EM601", call.lineno, "MEDIUM", "MEDIUM")
                elif name == "startswith" and s.lower().startswith("http") and not s.endswith("/"):
                    self.add("EM601", call.lineno, "MEDIUM", "MEDIUM")
        # deserialisers bandit misses
        if (recv, name) in (("jsonpickle", "decode"), ("dill", "loads"), ("dill", "load"),
                            ("yaml", "unsafe_load"), ("yaml", "unsafe_load_all"),
                            ("shelve", "open"), ("pandas", "read_pickle"), ("pd", "read_pickle")):
            self.add("EM701", call.lineno, "HIGH", "HIGH")
        if recv == "yaml" and name in ("load", "load_all"):
            loader = kw.get("Loader") or (call.args[1] if len(call.args) > 1 else None)
            ld = _dotted(loader) if loader is not None else None
            if ld and ld.split(".")[-1] in ("Loader", "UnsafeLoader", "FullLoader"):
                self.add("EM701", call.lineno, "HIGH", "HIGH")
        # world-writable modes (bandit checks os.chmod with a literal only)
        mode = None
        if name in ("mkdir", "makedirs"):
            mode = kw.get("mode") or (call.args[1] if len(call.args) > 1 and recv == "os" else
                                      call.args[0] if call.args and recv != "os" else None)
        elif name == "open" and recv == "os":
            mode = kw.get("mode") or (call.args[2] if len(call.args) > 2 else None)
        elif name in ("chmod", "lchmod"):
            mode = (call.args[1] if len(call.args) > 1 else kw.get("mode")) if recv == "os" else \
                (call.args[0] if call.args else kw.get("mode"))
        elif name == "fchmod" and recv == "os":
            mode = call.args[1] if len(call.args) > 1 else kw.get("mode")
        value = self._int(mode)
        if value is not None and value & 0o002:
            self.add("EM801", call.lineno, "HIGH", "HIGH")
        if name == "umask" and recv == "os" and call.args:
            value = self._int(call.args[0])
            if value is not None and not value & 0o002:
                self.add("EM801", call.lineno, "MEDIUM", "HIGH")
        # tar extraction without a filter (bandit is satisfied by any members= argument)
        if name in ("extractall", "extract") and recv in self.tar_names and "filter" not in kw:
            members = kw.get("members")
            path = kw.get("path") or (call.args[1] if name == "extract" and len(call.args) > 1
                                      else call.args[0] if name == "extractall" and call.args
                                      else None)
            if ".." in (_const_str(path) or ""):
                self.add("EM302", call.lineno, "HIGH", "HIGH")
            elif (name == "extractall" and isinstance(members, ast.Call)
                  and _func_parts(members)[1] == "getmembers"):
                self.add("EM302", call.lineno, "HIGH", "HIGH")
            elif name == "extract" and call.args:
                used = {n.id for n in ast.walk(call.args[0]) if isinstance(n, ast.Name)}
                self.add("EM302", call.lineno, "MEDIUM",
                         "LOW" if used & self.validated else "MEDIUM")
        # pickle under another name (``import cPickle as pickle`` hides it from bandit)
        if recv in ("pickle", "cPickle", "_pickle", "marshal") and name in ("loads", "load",
                                                                             "Unpickler"):
            self.add("EM701", call.lineno, "MEDIUM", "HIGH")
        # XXE
        if name == "XMLParser":
            for k in ("resolve_entities",):
                v = kw.get(k)
                if isinstance(v, ast.Constant) and v.value is True:
                    self.add("EM901", call.lineno, "MEDIUM", "HIGH")
            v = kw.get("no_network")
            if isinstance(v, ast.Constant) and v.value is False:
                self.add("EM901", call.lineno, "MEDIUM", "HIGH")
        if name == "setFeature" and len(call.args) >= 2:
            feat = _dotted(call.args[0]) or _const_str(call.args[0]) or ""
            on = call.args[1]
            if ("external" in feat.lower()) and isinstance(on, ast.Constant) and on.value in (True, 1):
                self.add("EM901", call.lineno, "MEDIUM", "HIGH")

    def substring_check(self, node: ast.Compare) -> None:
        left = _const_str(node.left)
        if left is None or not any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            return
        if not _HOSTNAME.match(left):
            return
        comp = node.comparators[0]
        if isinstance(comp, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            return  # membership in a literal allow-list is fine
        self.add("EM601", node.lineno, "MEDIUM", "MEDIUM")


_SAFE_ANNOTATIONS = {"int", "float", "bool", "UUID", "uuid.UUID", "date", "datetime", "Decimal"}
_NOT_INPUT_PARAMS = {"self", "cls", "request", "req", "db", "session", "background_tasks",
                     "response", "settings", "current_user", "user", "conn", "cursor"}


def _is_request(node: ast.AST) -> bool:
    """``request`` (and its usual aliases), or a handler's ``self.request``."""
    if isinstance(node, ast.Name):
        return node.id in _REQUEST_NAMES
    return (isinstance(node, ast.Attribute) and node.attr == "request"
            and isinstance(node.value, ast.Name) and node.value.id == "self")


# A parameter name that says it holds untrusted data: a marker word, or "user"/"client"/... +
# what kind of data (``user_input``, ``userUrl``, ``client_data``); ``user``/``user_id``/
# ``username`` alone say whose, not where from.
_UNTRUSTED_WORDS = {"untrusted", "tainted", "attacker", "unsanitized", "unsanitised",
                    "unvalidated", "unverified", "unescaped", "unsafe", "malicious"}
_UNTRUSTED_OWNERS = {"user", "client", "external", "remote", "foreign", "incoming", "submitted",
                     "supplied", "provided"}
_UNTRUSTED_DATA = {"input", "inputs", "data", "text", "string", "str", "value", "val", "path",
                   "file", "filename", "fname", "filepath", "url", "uri", "link", "host",
                   "hostname", "domain", "query", "content", "html", "xml", "json", "yaml",
                   "payload", "pattern", "regex", "expr", "expression", "code", "command", "cmd",
                   "arg", "args", "param", "params", "argument", "arguments", "request", "message",
                   "msg", "comment", "template", "markup", "location", "redirect", "target",
                   "dest", "destination", "header", "headers", "cookie", "body", "form", "search",
                   "term", "keyword", "filter", "selector", "script", "bytes", "stream", "blob",
                   "formula", "statement", "sql", "supplied", "provided", "controlled", "given"}
# docstring phrases that say a value comes from outside: "user-provided", "from the user",
# "untrusted", "supplied by the client", "attacker-controlled"
_UNTRUSTED_DOC = re.compile(
    r"\b(?:user|client|attacker|end[- ]user|visitor|customer|requester)s?['’]?s?[- ]"
    r"(?:provided|supplied|controlled|submitted|entered|given|generated|input|uploaded|sent|"
    r"chosen)\b"
    r"|\b(?:provided|supplied|controlled|specified|submitted|entered|given|uploaded|sent|chosen|"
    r"received|coming|obtained|taken|read|input)\s+(?:directly\s+)?(?:by|from)\s+(?:the\s+|a\s+|an\s+)?"
    r"(?:user|client|attacker|external|remote|untrusted|end[- ]user|visitor|customer|request|"
    r"browser|web|network|outside|internet|http)"
    r"|\b(?:user|client|attacker|visitor|customer|requester)s?\s+(?:provides|supplies|enters|"
    r"submits|uploads|sends|gives|controls|types|chooses|inputs|provide|supply|enter|submit|"
    r"upload|send|control|choose)\b"
    r"|\buntrusted\b|\buser[- ]input\b|\binput\s+from\s+(?:the\s+)?user|\bexternal\s+input\b"
    r"|\bfrom\s+(?:an?\s+)?(?:untrusted|external|unknown)\s+source", re.I)


def _name_words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]


def _untrusted_name(name: str) -> bool:
    words = _name_words(name)
    if any(w in _UNTRUSTED_WORDS for w in words):
        return True
    return len(words) >= 2 and words[0] in _UNTRUSTED_OWNERS and \
        any(w in _UNTRUSTED_DATA or w[:-1] in _UNTRUSTED_DATA for w in words[1:])   # plurals


def _doc_param_lines(doc: str, names: list[str]) -> dict[str, str]:
    """Each parameter's description in a docstring (Google/NumPy ``name (type): text``,
    Sphinx ``:param name: text``), continuation lines included."""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        for n in names:
            if re.match(rf"\s*(?::param\s+(?:[\w\[\], .|]+\s+)?{re.escape(n)}\s*:|"
                        rf"[-*]?\s*`*{re.escape(n)}`*\s*(?:\([^)]*\))?\s*[:\-–])", line):
                text = [line]
                indent = len(line) - len(line.lstrip())
                for nxt in lines[i + 1:]:
                    if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                        break
                    text.append(nxt)
                out[n] = " ".join(text)
    return out


def _named_in_untrusted_sentences(text: str, names: list[str]) -> set[str]:
    return {n for n in names for sentence in re.split(r"(?<=[.;:!?])\s+|\n\s*\n", text)
            if _UNTRUSTED_DOC.search(sentence) and
            re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", sentence)}


def _declared_untrusted(fn: ast.FunctionDef | ast.AsyncFunctionDef, names: list[str]) -> set[str]:
    """The parameters a plain function says hold untrusted data: by name; described so in the
    docstring's parameter list; named in a docstring sentence that speaks of untrusted input
    ("the file whose name the user provides"); or, when the docstring speaks of untrusted input
    and names none of the parameters, every text-like one (not annotated as a number, bool or
    date). The user's request is not read for this: it describes a whole application ("an app
    that stores user uploaded images"), and on the paper's secure set it made ordinary helpers
    look like request handlers (measured in audit 5; see the README)."""
    out = {n for n in names if _untrusted_name(n)}
    doc = ast.get_docstring(fn) or ""
    if not doc or not _UNTRUSTED_DOC.search(doc):
        return out
    per = _doc_param_lines(doc, names)
    if per:
        return out | {n for n, text in per.items() if _UNTRUSTED_DOC.search(text)} | \
            _named_in_untrusted_sentences(doc, [n for n in names if n not in per])
    return out | set(names)


def _route_info(fn: ast.FunctionDef | ast.AsyncFunctionDef,
                view_method: bool = False) -> tuple[dict[str, int], bool]:
    """(parameter -> taint level, is the function a web request handler?).

    Sound default, stated: in a request handler, the parameters a framework fills from the
    request (Flask/Django URL parts, FastAPI path/query/body parameters) are WEB input, except
    typed as numbers/UUIDs/dates or injected dependencies. In any other function, every
    parameter is PARAM: possibly attacker-controlled. Only sinks that are dangerous for *any*
    caller-supplied value (shell commands, eval/exec, deserialisation, SQL/LDAP/XPath text,
    templates compiled from a string, XML parsing) fire on PARAM; sinks where callers pass
    trusted values every day (file paths, URLs, redirects, HTML) need WEB input — unless the
    function declares the parameter untrusted (:func:`_declared_untrusted`): then it is WEB.
    """
    is_route = False
    framework_fills_all = False
    path_params: dict[str, bool] = {}
    for d in fn.decorator_list:
        call = d if isinstance(d, ast.Call) else None
        f = call.func if call else d
        attr = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if attr in _ROUTE_ATTRS or attr == "api_view":
            is_route = True
            if attr != "route":
                framework_fills_all = True  # FastAPI-style: query/body parameters too
            if call and call.args and _const_str(call.args[0]):
                for conv, pname in re.findall(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>",
                                              _const_str(call.args[0])):
                    path_params[pname] = conv not in _SAFE_CONVERTERS
                for pname, _conv in re.findall(r"\{(\w+)(?::(\w+))?\}", _const_str(call.args[0])):
                    path_params[pname] = True
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    django = bool(fn.args.args) and fn.args.args[0].arg == "request"
    if django or view_method:
        # Django-style view: a function taking the request first; or a class-based view's
        # method (the framework passes the URL's parts as its parameters)
        is_route = django = True
    defaults = dict(zip([a.arg for a in (fn.args.posonlyargs + fn.args.args)][::-1],
                        fn.args.defaults[::-1]))
    defaults.update({a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d})
    params: dict[str, int] = {}
    every = args + [x for x in (fn.args.vararg, fn.args.kwarg) if x]
    declared = set() if is_route else _declared_untrusted(fn, [
        a.arg for a in every if a.arg not in ("self", "cls") and
        ((_dotted(a.annotation) if a.annotation is not None else None) or "").split(".")[-1]
        not in _SAFE_ANNOTATIONS])
    for a in every:
        name = a.arg
        ann = _dotted(a.annotation) if a.annotation is not None else None
        dflt = defaults.get(name)
        injected = isinstance(dflt, ast.Call) and _func_parts(dflt)[1] in ("Depends", "Security")
        if not is_route:
            if name not in ("self", "cls"):
                params[name] = WEB if name in declared else PARAM
            continue
        if name in _NOT_INPUT_PARAMS or injected or (ann or "").split(".")[-1] in _SAFE_ANNOTATIONS:
            continue
        if name in path_params:
            if path_params[name]:
                params[name] = WEB
        elif framework_fills_all or django:
            params[name] = WEB
    return params, is_route


def _unescaped_host_dot(pattern: str) -> bool:
    """Does a regex contain a '.' meant as a literal host dot (``www.x`` or ``x.com``)?"""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == ".":
            before = pattern[max(0, i - 3):i]
            after = pattern[i + 1:]
            prev = pattern[i - 1] if i else ""
            if (prev.isalnum() or prev in "-_])}+*") and _HOST_TAIL.match(after):
                return True
            if before.lower() == "www" and after[:1].isalpha():
                return True
        i += 1
    return False


def run_rules(tree: ast.Module, lines: list[str]) -> list[Finding]:
    """emlab's findings for one parsed Python block (never executed)."""
    return _Rules(tree, lines).run()


RULES = {k: {"name": v[0], "cwe": v[1], "message": v[2]} for k, v in _MESSAGES.items()}
