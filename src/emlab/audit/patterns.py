"""emlab's pattern rules: weaknesses visible in one call, assignment or comparison (no data flow).

Written from the CWE list of issue 9 (not from any evaluation corpus). Each finding names its
CWE; severities/confidences are chosen so the default thresholds (MEDIUM/MEDIUM) count the clear
cases and leave the guesses (LOW confidence) reported but uncounted.

| id     | CWE  | what                                                                    |
|--------|------|-------------------------------------------------------------------------|
| EM1001 | 327  | broken cipher (DES, 3DES, RC4, Blowfish) or ECB mode                    |
| EM1002 | 916  | a password hashed with a fast unsalted hash (md5/sha*)                  |
| EM1003 | 338  | ``random`` used for a token, key, password, salt, nonce or session id   |
| EM1005 | 347  | JWT decoded without verifying its signature                             |
| EM1006 | 1204 | a constant IV or nonce (literal, zero bytes) for a cipher               |
| EM1007 | 760  | a constant salt for a password hash / key derivation                    |
| EM1008 | 321  | a cipher, MAC or JWT keyed with a literal                               |
| EM1009 | 780  | RSA encryption with PKCS#1 v1.5 padding instead of OAEP                 |
| EM1101 | 798  | hard-coded credential (password/secret/key/token = "literal")           |
| EM1102 | 259  | a password compared with a literal                                      |
| EM1103 | 521  | an empty password given to a connection or login                        |
| EM1104 | 256  | a password stored as it was typed (SQL insert/update, session, cookie)  |
| EM1201 | 295  | certificate or hostname verification turned off                        |
| EM1301 | 489  | debug mode on (Flask/Django/FastAPI)                                    |
| EM1401 | 532  | a secret written to a log or stdout                                     |
| EM1501 | 306  | an admin route with no authentication check                             |
| EM1502 | 614  | a session/auth cookie set without Secure/HttpOnly                       |
| EM1503 | 209  | exception details (traceback, str(e)) returned to the client            |
| EM1504 | 208  | a signature/token compared with ``==`` (timing attack)                  |
| EM1505 | 1333 | a regular expression with nested quantifiers (catastrophic backtracking)|
| EM1506 | 352  | CSRF protection turned off (csrf_exempt, WTF_CSRF_ENABLED = False)      |
| EM1507 | 942  | CORS open to any origin with credentials                                |
| EM1508 | 367  | ``os.access`` checked, then the same path used (time-of-check race)     |
| EM1509 | 807  | an authorization decision on a client-controlled cookie/header/argument |

EM1006-EM1509 were added in audit 3, after SecurityEval's misses were counted by CWE (the
corpus became in-sample for them); each is written from its CWE's definition.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from emlab.audit.finding import dotted_name

_SECRET_NAME = re.compile(
    r"^(.*_)?(password|passwd|pwd|pass|secret|api_?key|apikey|access_?key|secret_?key|"
    r"private_?key|client_?secret|auth_?token|access_?token|refresh_?token|token|"
    r"credentials?|db_?pass(word)?|ssn|credit_?card|card_?number|cvv)(_.*)?$", re.I)
_NOT_SECRET_SUFFIX = re.compile(r"(_|^)(type|types|count|len|length|name|names|id|ids|field|"
                                r"url|uri|file|path|dir|hash|hashed|digest|hint|prompt|label|"
                                r"policy|min|max|regex|pattern|re|endpoint|header|param|key_name|"
                                r"required|reset|expiry|expires|ttl|valid|format)$", re.I)
_PLACEHOLDER = re.compile(r"^(|\*+|x+|\.+|-+|<.*>|\{.*\}|\$\{?.*|%\(.*|your[_ -].*|changeme|"
                          r"none|null|todo|fixme|redacted|example.*|placeholder.*|dummy.*|"
                          r"\w+_here|enter.*|password|secret|token|\?+)$", re.I)
_KEY_PREFIX = re.compile(r"^(sk_live_|sk-[A-Za-z0-9]{16}|AKIA[0-9A-Z]{12}|ghp_|gho_|xox[abp]-|"
                         r"AIza[0-9A-Za-z_-]{20}|-----BEGIN( RSA| EC| DSA| OPENSSH)? PRIVATE KEY)")
_SECRET_CONTEXT = re.compile(r"(token|secret|password|passwd|pwd|key|nonce|salt|session|sid|"
                             r"otp|csrf|reset|auth|cookie|verif|confirm|activation|invite|"
                             r"api|credential|pin\b|signup|captcha|unpredictab|cryptographic)", re.I)
_RANDOM_FUNCS = {"random", "randint", "randrange", "choice", "choices", "sample",
                 "getrandbits", "uniform", "randbytes", "shuffle"}
_FAST_HASH = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512",
              "blake2b", "blake2s"}
_AUTH_HINT = re.compile(r"(login|auth|permission|require|jwt|protect|role|admin_required|"
                        r"token_required|verify|access|user_passes_test|staff|superuser)", re.I)
_AUTH_BODY = re.compile(r"(current_user|session\[|session\.get|g\.user|request\.user|"
                        r"is_authenticated|is_admin|is_staff|is_superuser|check_auth|"
                        r"authorization|authenticate|verify_token|has_perm|abort\(40[13]|"
                        r"get_jwt|login_required|permission)", re.I)
_ADMIN = re.compile(r"admin|superuser|manage_users|internal", re.I)
_SECRET_LABEL = re.compile(r"(password|passwd|pwd|secret|api[_ ]?key|token|credential)s?"
                           r"\s*[=:]\s*['\"]?$", re.I)
# A group whose whole body is one repeated atom (optionally followed by an optional atom),
# itself repeated: ``(a+)+``, ``([a-z0-9]+)*``, ``(\w+\s?)+``, ``(.*)*``. A repetition with a
# separator between the repeats (``x+(\.x+)*``) is linear and not matched.
_ATOM = r"(?:\[(?:[^\]\\]|\\.)+\]|\\[A-Za-z]|\.|[A-Za-z0-9])"
_NESTED_QUANT = re.compile(rf"\((?:\?:)?{_ATOM}[+*](?:{_ATOM}[?*])?\)[+*{{]")


def _dotted(node: ast.AST | None) -> str | None:
    return None if node is None else dotted_name(node)


def _name_of(target: ast.AST) -> str | None:
    """The identifier an assignment target or keyword speaks of (``x``, ``self.x``, ``d['x']``)."""
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    if isinstance(target, ast.Subscript):
        s = target.slice
        if isinstance(s, ast.Constant) and isinstance(s.value, str):
            return s.value
    return None


def is_secret_name(name: str | None) -> bool:
    return bool(name) and bool(_SECRET_NAME.match(name)) and not _NOT_SECRET_SUFFIX.search(name)


_CONNECT = {"connect", "Connection", "connect_db", "login", "create_engine", "MongoClient",
            "Redis", "StrictRedis", "SMTP", "SMTP_SSL", "FTP", "FTP_TLS", "Client", "Canvas",
            "authenticate", "Session", "engine_from_config"}
_BLANK = re.compile(r"^(\*+|x+|\.+|-+|<.*>|\{.*\}|\$\{?.*|%\(.*|your[_ -].*|\w+_here|enter.*|\?+|"
                    r"none|null|redacted)$", re.I)
_HIGH_ENTROPY = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9_\-+/=]{20,}$")


def _literal_secret(v: ast.AST) -> bool:
    if not (isinstance(v, ast.Constant) and isinstance(v.value, str)):
        return False
    s = v.value.strip()
    return len(s) >= 4 and not _PLACEHOLDER.match(s) and " " not in s[:40]


_IV_NAME = re.compile(r"^(.*_)?(iv|nonce|init(ialization)?_?vector)$", re.I)
_SALT_NAME = re.compile(r"^(.*_)?salt$", re.I)
_PLAIN_PASSWORD = re.compile(r"^(.*_)?(password|passwd|pwd|pass|passphrase)$", re.I)
_ROLE_KEY = re.compile(r"^(is_?)?(admin|administrator|role|roles|superuser|staff|privileges?|"
                       r"access_?level|user_?type|auth(enticated|orized)?|logged_?in|"
                       r"is_?logged_?in|permission|permissions)$", re.I)
_CIPHER_MODES = {"CBC", "CTR", "OFB", "CFB", "CFB8", "GCM", "XTS"}
_KEYED = {("AES", "new"), ("DES", "new"), ("DES3", "new"), ("ChaCha20", "new"), ("Salsa20", "new"),
          ("ARC4", "new"), ("Blowfish", "new"), ("hmac", "new"), ("HMAC", "new"), ("jwt", "encode"),
          ("jwt", "decode"), ("algorithms", "AES"), ("algorithms", "ChaCha20"), (None, "Fernet"),
          ("fernet", "Fernet"), (None, "AESGCM"), (None, "ChaCha20Poly1305")}
_DB_URL = re.compile(r"^[a-z][a-z0-9+]*://[^:/@\s]+:([^@/\s]*)@", re.I)


def _constant_bytes(v: ast.AST | None) -> bool:
    """A literal str/bytes, ``b"\\0" * 16``, ``bytes(16)`` / ``bytearray(16)``: the same value
    on every run."""
    if v is None:
        return False
    if isinstance(v, ast.Constant) and isinstance(v.value, (str, bytes)):
        return len(v.value) > 0
    if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Mult):
        return any(isinstance(x, ast.Constant) and isinstance(x.value, (str, bytes))
                   for x in (v.left, v.right))
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id in (
            "bytes", "bytearray") and len(v.args) == 1 and isinstance(v.args[0], ast.Constant) \
            and isinstance(v.args[0].value, int):
        return True
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "encode" \
            and isinstance(v.func.value, ast.Constant) and isinstance(v.func.value.value, str):
        return len(v.func.value.value) > 0
    return False


def _client_value(node: ast.AST) -> str | None:
    """The key of ``request.cookies/headers/args/form.get('k')`` or ``[...]['k']``, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr == "get" and node.args:
        src, key = node.func.value, node.args[0]
    elif isinstance(node, ast.Subscript):
        src, key = node.value, node.slice
    else:
        return None
    d = _dotted(src) or ""
    parts = d.split(".")
    if len(parts) == 2 and parts[0] in ("request", "req") and parts[1] in (
            "cookies", "COOKIES", "headers", "args", "form", "values", "GET", "POST", "META"):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
    return None


class PatternRules:
    def __init__(self, rules: Any):  # an emlab.audit.rules._Rules (which imports this module)
        self.r = rules

    def add(self, test_id: str, node: ast.AST, severity: str, confidence: str) -> None:
        self.r.add(test_id, node.lineno, severity, confidence)

    def run(self) -> None:
        parents: dict[ast.AST, ast.AST] = {}
        for n in self.r.nodes:
            for c in ast.iter_child_nodes(n):
                parents[c] = n
        self.parents = parents
        module_names = {t.id for n in self.r.tree.body if isinstance(n, ast.Assign)
                        for t in n.targets if isinstance(t, ast.Name)}
        self.django_settings = bool(module_names & {"ALLOWED_HOSTS", "INSTALLED_APPS",
                                                    "SECRET_KEY", "MIDDLEWARE", "DATABASES"})
        for n in self.r.nodes:
            if isinstance(n, ast.Call):
                self.call(n)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                self.assign(n)
            elif isinstance(n, ast.Compare):
                self.compare(n)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.route_auth(n)
                self.error_disclosure(n)
                self.csrf_exempt(n)
                self.check_then_use(n)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "__reduce__":
                body = ast.unparse(n)
                if re.search(r"\b(exec|eval|system|popen|subprocess|check_output|__import__)\b", body):
                    self.add("EM701", n, "HIGH", "HIGH")
            elif isinstance(n, ast.Attribute) and n.attr == "MODE_ECB":
                self.add("EM1001", n, "MEDIUM", "HIGH")
            elif isinstance(n, ast.Dict):
                self.dict_literal(n)
            elif isinstance(n, (ast.If, ast.While, ast.IfExp, ast.Assert)):
                self.client_decision(n)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                self.db_url(n)

    # ------------------------------------------------------------ helpers

    def _enclosing(self, node: ast.AST, kinds) -> ast.AST | None:
        p = self.parents.get(node)
        while p is not None and not isinstance(p, kinds):
            p = self.parents.get(p)
        return p

    def _context_names(self, node: ast.AST) -> list[str]:
        """Names around a value: the function it is in, the target it is assigned to, the keyword
        or dict key it is passed as."""
        out = []
        fn = self._enclosing(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if fn is not None:
            out.append(fn.name)
            doc = ast.get_docstring(fn)
            if doc:
                out.append(doc.split("\n\n")[0])  # what the function is for, in words
        p, child = self.parents.get(node), node
        for _ in range(6):
            if p is None:
                break
            if isinstance(p, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = p.targets if isinstance(p, ast.Assign) else [p.target]
                out += [x for t in targets for x in
                        ([_name_of(t)] + [_name_of(e) for e in getattr(t, "elts", [])]) if x]
                break
            if isinstance(p, ast.keyword) and p.arg:
                out.append(p.arg)
            if isinstance(p, ast.Dict):
                for k, v in zip(p.keys, p.values):
                    if v is child and isinstance(k, ast.Constant) and isinstance(k.value, str):
                        out.append(k.value)
            if isinstance(p, ast.Return) and fn is not None:
                break
            child, p = p, self.parents.get(p)
        return out

    # ------------------------------------------------------------ calls

    def call(self, call: ast.Call) -> None:
        f = call.func
        recv = _dotted(f.value) if isinstance(f, ast.Attribute) else None
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        mod = self.r.module_of(recv, name)
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        full = f"{mod}.{name}" if mod else (name or "")
        # broken ciphers and ECB
        if name in ("new",) and recv and recv.split(".")[-1] in ("DES", "DES3", "ARC4", "ARC2",
                                                                 "Blowfish", "CAST", "XOR"):
            self.add("EM1001", call, "HIGH", "HIGH")
        if name in ("TripleDES", "ARC4", "Blowfish", "CAST5", "IDEA", "SEED") and (
                "algorithms" in (recv or "") or "cryptography" in mod):
            self.add("EM1001", call, "MEDIUM", "HIGH")
        if name == "ECB" and ("modes" in (recv or "") or "cryptography" in mod):
            self.add("EM1001", call, "MEDIUM", "HIGH")
        # fast hash of a password
        if name in _FAST_HASH and (recv == "hashlib" or mod == "hashlib") and call.args:
            used = {n.id for n in ast.walk(call.args[0]) if isinstance(n, ast.Name)} | {
                n.attr for n in ast.walk(call.args[0]) if isinstance(n, ast.Attribute)}
            if any(re.match(r"^(.*_)?(password|passwd|pwd|pass|passphrase)(_.*)?$", u, re.I)
                   for u in used):
                self.add("EM1002", call, "MEDIUM", "HIGH")
        # random for secrets
        if (recv == "random" or mod == "random") and name in _RANDOM_FUNCS:
            ctx = self._context_names(call)
            if any(_SECRET_CONTEXT.search(c) for c in ctx):
                self.add("EM1003", call, "MEDIUM", "HIGH")
        # JWT without verification
        if name == "decode" and (recv in ("jwt", "jose.jwt") or mod.startswith("jwt")):
            v = kw.get("verify")
            opts = kw.get("options")
            off = isinstance(v, ast.Constant) and v.value is False
            if isinstance(opts, ast.Dict):
                for k, val in zip(opts.keys, opts.values):
                    if (isinstance(k, ast.Constant) and k.value == "verify_signature"
                            and isinstance(val, ast.Constant) and val.value is False):
                        off = True
            algs = kw.get("algorithms")
            if isinstance(algs, (ast.List, ast.Tuple)) and any(
                    isinstance(e, ast.Constant) and str(e.value).lower() == "none" for e in algs.elts):
                off = True
            if off:
                self.add("EM1005", call, "HIGH", "HIGH")
        # hard-coded credentials passed as keywords (to a connection: even "password" itself)
        # ("password" itself is reported but not counted: the paper's secure set, the label this
        # audit is calibrated on, writes password='password' in 1-2% of its rows)
        for k in call.keywords:
            if k.arg and is_secret_name(k.arg) and _literal_secret(k.value):
                self.add("EM1101", k.value, "MEDIUM", "MEDIUM")
            elif k.arg and is_secret_name(k.arg) and name in _CONNECT and \
                    isinstance(k.value, ast.Constant) and isinstance(k.value.value, str) and \
                    len(k.value.value) >= 4 and not _BLANK.match(k.value.value):
                self.add("EM1101", k.value, "MEDIUM", "LOW")
        # a key-looking literal passed to a client or cipher (``Canvas(url, key)``)
        if name in _CONNECT or (name or "")[:1].isupper():
            for a in call.args:
                if isinstance(a, ast.Name) and re.search(r"(^|_)(key|token|secret)$", a.id, re.I) \
                        and a.id in self.r.string_names and \
                        _HIGH_ENTROPY.match(self.r.string_names[a.id]):
                    self.add("EM1101", call, "MEDIUM", "MEDIUM")
        # certificate checks off
        v = kw.get("verify")
        if isinstance(v, ast.Constant) and v.value is False and name in (
                "get", "post", "put", "delete", "patch", "head", "request", "Client",
                "AsyncClient", "stream", "options", "Session"):
            self.add("EM1201", call, "HIGH", "HIGH")
        if name == "_create_unverified_context" or full.endswith("ssl._create_unverified_context"):
            self.add("EM1201", call, "HIGH", "HIGH")
        cr = kw.get("cert_reqs")
        if cr is not None and ((_dotted(cr) or "").endswith("CERT_NONE") or (
                isinstance(cr, ast.Constant) and cr.value in ("CERT_NONE", "NONE", 0))):
            self.add("EM1201", call, "HIGH", "HIGH")
        if name == "set_missing_host_key_policy" and call.args:
            a = call.args[0]
            pol = _dotted(a.func if isinstance(a, ast.Call) else a) or ""
            if pol.split(".")[-1] in ("AutoAddPolicy", "WarningPolicy"):
                self.add("EM1201", call, "HIGH", "MEDIUM")
        # debug mode
        if name == "run" and isinstance(kw.get("debug"), ast.Constant) and kw["debug"].value is True:
            self.add("EM1301", call, "MEDIUM", "HIGH")
        if name in ("FastAPI", "Starlette") and isinstance(kw.get("debug"), ast.Constant) \
                and kw["debug"].value is True:
            self.add("EM1301", call, "MEDIUM", "HIGH")
        # secrets in logs / stdout
        log = (recv in ("logging", "logger", "log", "LOGGER", "LOG", "_logger", "_log")
               or (recv or "").endswith(("logger", "log")) or (recv is None and name == "print")
               or (recv or "").startswith("app.logger"))
        if log and name in ("debug", "info", "warning", "warn", "error", "critical", "exception",
                            "log", "print"):
            for a in call.args:
                if self._mentions_secret(a):
                    self.add("EM1401", call, "MEDIUM", "MEDIUM")
                    break
        # cookies without flags
        if name == "set_cookie" and call.args:
            cname = call.args[0]
            cn = cname.value if isinstance(cname, ast.Constant) and isinstance(cname.value, str) else ""
            if re.search(r"sess|auth|token|sid|jwt|remember|login", cn, re.I):
                secure = kw.get("secure")
                http = kw.get("httponly")
                if not (isinstance(secure, ast.Constant) and secure.value is True) or not (
                        isinstance(http, ast.Constant) and http.value is True):
                    self.add("EM1502", call, "MEDIUM", "MEDIUM")
        # catastrophic regexes
        if (recv in ("re", "regex") or mod in ("re", "regex")) and call.args:
            a = call.args[0]
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and _NESTED_QUANT.search(a.value):
                self.add("EM1505", call, "MEDIUM", "MEDIUM")
        self.crypto_constants(call, recv, name, mod, kw)
        # TLS without verification: ssl.wrap_socket (CERT_NONE by default), a pyOpenSSL context
        # that never calls set_verify
        if name == "wrap_socket" and (recv == "ssl" or mod == "ssl") and "cert_reqs" not in kw:
            self.add("EM1201", call, "MEDIUM", "MEDIUM")
        if name == "Context" and (recv or "").endswith("SSL") and "set_verify" not in self.r.source:
            self.add("EM1201", call, "MEDIUM", "MEDIUM")
        if name == "process_jwt" and "verify_jwt" not in self.r.source:
            self.add("EM1005", call, "HIGH", "MEDIUM")

        self.passwords(call, recv, name, kw)
        # CORS for every origin, with credentials
        if name == "CORS" or (name == "add_middleware" and call.args and
                              (_dotted(call.args[0]) or "").endswith("CORSMiddleware")):
            creds = kw.get("supports_credentials", kw.get("allow_credentials"))
            origins = kw.get("origins", kw.get("allow_origins"))
            res = kw.get("resources")
            star = origins is None and res is None or any(
                isinstance(x, ast.Constant) and x.value == "*" for x in ast.walk(origins or res))
            if isinstance(creds, ast.Constant) and creds.value is True and star:
                self.add("EM1507", call, "MEDIUM", "MEDIUM")

    def _literal_value(self, v: ast.AST | None) -> bool:
        """A constant (or a name assigned only constants anywhere in the block)."""
        if v is None:
            return False
        if _constant_bytes(v):
            return True
        if isinstance(v, ast.Name):
            vals = self.r.constant_names.get(v.id)
            return bool(vals) and all(vals)
        return False

    def crypto_constants(self, call: ast.Call, recv, name, mod: str, kw: dict) -> None:
        last = (recv or "").split(".")[-1] or None
        # a constant IV / nonce
        for k in ("iv", "IV", "nonce", "initial_value"):
            if self._literal_value(kw.get(k)):
                self.add("EM1006", call, "MEDIUM", "HIGH")
        if name in _CIPHER_MODES and ("modes" in (recv or "") or "cryptography" in mod) and \
                call.args and self._literal_value(call.args[0]):
            self.add("EM1006", call, "MEDIUM", "HIGH")
        if name == "new" and last in ("AES", "DES3", "DES", "Blowfish", "ARC2", "CAST") and \
                len(call.args) >= 3 and self._literal_value(call.args[2]):
            self.add("EM1006", call, "MEDIUM", "HIGH")
        # a constant salt
        salt = None
        if name == "pbkdf2_hmac":
            salt = kw.get("salt") or (call.args[2] if len(call.args) > 2 else None)
        elif name in ("scrypt", "PBKDF2HMAC", "Scrypt", "PBKDF2", "hash_secret", "hash_secret_raw",
                      "argon2id", "HKDF"):
            salt = kw.get("salt") or (call.args[1] if name in ("PBKDF2", "scrypt") and
                                      len(call.args) > 1 and recv != "hashlib" else None)
        elif name == "hashpw" and (recv == "bcrypt" or mod == "bcrypt") and len(call.args) > 1:
            salt = call.args[1]
        elif name == "crypt" and (recv == "crypt" or mod == "crypt") and len(call.args) > 1:
            salt = call.args[1]
        if self._literal_value(salt):
            self.add("EM1007", call, "MEDIUM", "HIGH")
        # a literal key
        if (last, name) in _KEYED or (None, name) in _KEYED and recv is None:
            key = kw.get("key") or (call.args[1] if name in ("encode", "decode") and len(call.args) > 1
                                    else call.args[0] if name not in ("encode", "decode") and call.args
                                    else None)
            if self._literal_value(key) and not (isinstance(key, ast.Constant) and
                                                 _PLACEHOLDER.match(str(key.value))):
                self.add("EM1008", call, "MEDIUM", "MEDIUM")
        # RSA with PKCS#1 v1.5 encryption padding
        if name == "new" and last == "PKCS1_v1_5" and "Signature" not in mod + (recv or "") \
                and "Signature" not in self.r.aliases.get("PKCS1_v1_5", "Cipher"):
            self.add("EM1009", call, "MEDIUM", "HIGH")
        if name in ("encrypt", "decrypt") and any(
                isinstance(a, ast.Call) and _dotted(a.func) and _dotted(a.func).endswith("PKCS1v15")
                for a in call.args + [k.value for k in call.keywords]):
            self.add("EM1009", call, "MEDIUM", "HIGH")

    def passwords(self, call: ast.Call, recv, name, kw: dict) -> None:
        # an empty password for a connection or login
        for k in call.keywords:
            if k.arg and re.match(r"^(password|passwd|pwd|db_?password)$", k.arg, re.I) and \
                    isinstance(k.value, ast.Constant) and k.value.value == "" and \
                    name not in ("get", "getenv", "pop", "setdefault", "Field", "Column",
                                 "PasswordField", "CharField", "StringField", "add_argument"):
                self.add("EM1103", call, "MEDIUM", "MEDIUM")
        # a password stored as typed: SQL insert/update parameters, a session or a cookie
        if name in ("execute", "executemany") and len(call.args) >= 2:
            text = ""
            b = call.args[0]
            if isinstance(b, ast.Constant) and isinstance(b.value, str):
                text = b.value
            elif isinstance(b, ast.Name):
                text = self.r.string_names.get(b.id, "")
            if re.search(r"^\s*(INSERT|UPDATE|REPLACE)\b", text, re.I) and \
                    re.search(r"pass(word|wd)?\b|pwd\b", text, re.I) and \
                    not re.search(r"hash|digest|crypt", text, re.I):
                params = call.args[1]
                elts = params.elts if isinstance(params, (ast.Tuple, ast.List)) else \
                    params.values if isinstance(params, ast.Dict) else [params]
                stored = [e.id for e in elts if isinstance(e, ast.Name)]  # as typed, not hashed
                if any(_PLAIN_PASSWORD.match(n) and not self._hashed_in_scope(call, n)
                       for n in stored):
                    self.add("EM1104", call, "MEDIUM", "MEDIUM")
        if name == "set_cookie" and call.args and isinstance(call.args[0], ast.Constant) and \
                isinstance(call.args[0].value, str) and _PLAIN_PASSWORD.match(call.args[0].value):
            self.add("EM1104", call, "MEDIUM", "MEDIUM")

    def _hashed_in_scope(self, node: ast.AST, name: str) -> bool:
        """Is ``name`` reassigned from a hash/KDF call in the enclosing function?"""
        fn = self._enclosing(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or self.r.tree
        for a in ast.walk(fn):
            if isinstance(a, ast.Assign) and any(name in [_name_of(t)] for t in a.targets) and \
                    re.search(r"hash|crypt|pbkdf|scrypt|argon|digest|encrypt",
                              ast.unparse(a.value), re.I):
                return True
        return False

    def dict_literal(self, node: ast.Dict) -> None:
        keys = {k.value.lower() for k in node.keys if isinstance(k, ast.Constant) and
                isinstance(k.value, str)}
        settings = len(keys & {"host", "user", "name", "engine", "port", "database", "db",
                               "username"}) >= 2
        for k, v in zip(node.keys, node.values):
            if settings and isinstance(k, ast.Constant) and isinstance(k.value, str) and \
                    k.value.lower() in ("password", "passwd", "pwd") and \
                    isinstance(v, ast.Constant) and v.value == "":
                self.add("EM1103", v, "MEDIUM", "MEDIUM")
            if settings and isinstance(k, ast.Constant) and isinstance(k.value, str) and \
                    k.value.lower() in ("password", "passwd", "pwd") and \
                    isinstance(v, ast.Constant) and isinstance(v.value, str) and \
                    len(v.value) >= 4 and not _BLANK.match(v.value) and not _literal_secret(v):
                self.add("EM1101", v, "MEDIUM", "MEDIUM")
            if isinstance(k, ast.Constant) and isinstance(k.value, str) and \
                    is_secret_name(k.value) and _literal_secret(v):
                self.add("EM1101", v, "MEDIUM", "MEDIUM")

    def db_url(self, node: ast.Constant) -> None:
        """``scheme://user:password@host``: a literal password (or an empty one)."""
        m = _DB_URL.match(node.value.strip())
        if not m:
            return
        pw = m.group(1)
        if pw == "":
            self.add("EM1103", node, "MEDIUM", "MEDIUM")
        elif not _PLACEHOLDER.match(pw) and not re.search(r"[{}%$<>]", pw):
            self.add("EM1101", node, "MEDIUM", "MEDIUM")

    def csrf_exempt(self, fn) -> None:
        for d in fn.decorator_list:
            txt = ast.unparse(d)
            if re.search(r"(^|\.)csrf_exempt$|(^|\.)csrf\.exempt$|^exempt$", txt):
                self.add("EM1506", d, "MEDIUM", "HIGH")

    def check_then_use(self, fn) -> None:
        """``if os.access(p, ...): open(p)``: the file can change between check and use."""
        checked: dict[str, int] = {}
        for n in ast.walk(fn):
            if isinstance(n, ast.Call) and _dotted(n.func) in ("os.access", "access") and n.args:
                key = ast.unparse(n.args[0])
                checked.setdefault(key, n.lineno)
        if not checked:
            return
        for n in ast.walk(fn):
            if isinstance(n, ast.Call) and n.args and _dotted(n.func) not in ("os.access", "access"):
                nm = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                if nm in ("open", "remove", "unlink", "chmod", "chown", "rename", "execv",
                          "system", "copy", "move", "rmtree") and \
                        ast.unparse(n.args[0]) in checked and n.lineno >= checked[ast.unparse(n.args[0])]:
                    self.add("EM1508", n, "MEDIUM", "MEDIUM")
                    return

    def _mentions_secret(self, a: ast.AST) -> bool:
        if isinstance(a, ast.JoinedStr):  # "... password={pw}": the text names the value
            for prev, v in zip(a.values, a.values[1:]):
                if isinstance(v, ast.FormattedValue) and isinstance(prev, ast.Constant) and \
                        _SECRET_LABEL.search(str(prev.value)):
                    return True
        for n in ast.walk(a):
            if isinstance(n, ast.Name) and is_secret_name(n.id):
                return True
            if isinstance(n, ast.Attribute) and is_secret_name(n.attr):
                return True
        return False

    # ------------------------------------------------------------ assignments

    def assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        if value is None:
            return
        for t in targets:
            name = _name_of(t)
            if is_secret_name(name) and _literal_secret(value):
                self.add("EM1101", node, "MEDIUM", "MEDIUM")
            elif isinstance(value, ast.Constant) and isinstance(value.value, str) and \
                    _KEY_PREFIX.match(value.value):
                self.add("EM1101", node, "HIGH", "HIGH")
            if name and _IV_NAME.match(name) and _constant_bytes(value):
                self.add("EM1006", node, "MEDIUM", "MEDIUM")
            if name and _SALT_NAME.match(name) and _constant_bytes(value):
                self.add("EM1007", node, "MEDIUM", "MEDIUM")
            if name in ("WTF_CSRF_ENABLED", "CSRF_ENABLED", "WTF_CSRF_CHECK_DEFAULT") and \
                    isinstance(value, ast.Constant) and value.value is False:
                self.add("EM1506", node, "MEDIUM", "HIGH")
            if isinstance(t, ast.Subscript) and name and _PLAIN_PASSWORD.match(name) and \
                    (_dotted(t.value) or "").split(".")[-1] == "session" and \
                    isinstance(value, ast.Name) and _PLAIN_PASSWORD.match(value.id) and \
                    not self._hashed_in_scope(node, value.id):
                self.add("EM1104", node, "MEDIUM", "MEDIUM")
            if name in ("verify_mode",) and (_dotted(value) or "").endswith("CERT_NONE"):
                self.add("EM1201", node, "HIGH", "HIGH")
            if name == "check_hostname" and isinstance(value, ast.Constant) and value.value is False:
                self.add("EM1201", node, "HIGH", "HIGH")
            if name in ("DEBUG", "debug") and isinstance(value, ast.Constant) and value.value is True:
                d = _dotted(t) or ""
                if isinstance(t, ast.Name) and name == "DEBUG" and self.django_settings:
                    self.add("EM1301", node, "MEDIUM", "MEDIUM")
                elif d.endswith("app.debug") or (isinstance(t, ast.Subscript) and name == "DEBUG"):
                    self.add("EM1301", node, "MEDIUM", "MEDIUM")

    # ------------------------------------------------------------ comparisons

    def compare(self, node: ast.Compare) -> None:
        if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            return
        sides = [node.left] + node.comparators
        names = [_name_of(s) if not isinstance(s, ast.Call) else None for s in sides]
        if any(n and re.match(r"^(.*_)?(password|passwd|pwd|pass)$", n, re.I) for n in names) \
                and any(_literal_secret(s) for s in sides):
            self.add("EM1102", node, "MEDIUM", "MEDIUM")
            return
        for s in sides:
            if isinstance(s, ast.Call) and isinstance(s.func, ast.Attribute) and \
                    s.func.attr in ("hexdigest", "digest") and "hmac" in ast.unparse(s.func.value):
                self.add("EM1504", node, "MEDIUM", "MEDIUM")
                return
        fn = self._enclosing(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if fn is None:
            return
        hmac_names = {t.id for a in ast.walk(fn) if isinstance(a, ast.Assign)
                      and isinstance(a.value, ast.Call) and "hmac" in ast.unparse(a.value.func)
                      for t in a.targets if isinstance(t, ast.Name)}
        if any(n in hmac_names for n in names if n):
            self.add("EM1504", node, "MEDIUM", "MEDIUM")
        elif any(n and re.search(r"(signature|hmac|csrf_?token|api_?key|auth_?token)$", n, re.I)
                 for n in names) and not any(isinstance(s, ast.Constant) and s.value is None
                                             for s in sides):
            self.add("EM1504", node, "MEDIUM", "LOW")

    def client_decision(self, node) -> None:
        """``if request.cookies.get('admin') == 'true'``: the client decides its own rights."""
        for m in ast.walk(node.test):
            key = _client_value(m)
            if key and _ROLE_KEY.match(key):
                self.add("EM1509", m, "MEDIUM", "MEDIUM")
                return

    # ------------------------------------------------------------ routes

    def _route_decorators(self, fn) -> tuple[list[str], str]:
        decos, path = [], ""
        for d in fn.decorator_list:
            decos.append(ast.unparse(d))
            call = d if isinstance(d, ast.Call) else None
            f = call.func if call else d
            attr = f.attr if isinstance(f, ast.Attribute) else None
            if attr in ("route", "get", "post", "put", "delete", "patch") and call and call.args \
                    and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                path = call.args[0].value
        return decos, path

    def route_auth(self, fn) -> None:
        decos, path = self._route_decorators(fn)
        if not path:
            return
        if not (_ADMIN.search(path) or _ADMIN.search(fn.name)):
            return
        route_like = re.compile(r"\.(route|get|post|put|delete|patch)\(")
        if any(_AUTH_HINT.search(d) for d in decos if not route_like.search(d)):
            return
        body = ast.unparse(fn)
        if _AUTH_BODY.search(body) or any(isinstance(a.annotation, ast.AST) and "Depends" in
                                          ast.unparse(a) for a in fn.args.args):
            return
        if any("Depends" in ast.unparse(d) for d in fn.args.defaults + fn.args.kw_defaults if d):
            return
        # a missing check is a property of the whole body the assistant wrote, not of the
        # ``def`` line a template may already hold
        self.r.add("EM1501", fn.lineno, "MEDIUM", "MEDIUM",
                   tuple(range(fn.lineno, (fn.end_lineno or fn.lineno) + 1)))

    def error_disclosure(self, fn) -> None:
        decos, path = self._route_decorators(fn)
        if not path:
            return
        for n in ast.walk(fn):
            if not isinstance(n, ast.ExceptHandler):
                continue
            for r in ast.walk(n):
                if isinstance(r, ast.Return) and r.value is not None:
                    txt = ast.unparse(r.value)
                    if "format_exc" in txt or "print_exc" in txt or (
                            n.name and re.search(rf"\b(str|repr)\({re.escape(n.name)}\)|"
                                                 rf"\{{{re.escape(n.name)}(!r)?\}}", txt)):
                        self.add("EM1503", r, "MEDIUM", "MEDIUM")
