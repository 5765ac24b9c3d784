"""GitHub Actions' own rules, as the CI rehearsal (tools/ci_rehearsal/) must follow them: expressions
(`${{ ... }}`, evaluated over plain dicts), how a matrix expands, $GITHUB_OUTPUT files, hashFiles.

The rehearsal runs what the workflow file says, so it must read it the way GitHub does:
contexts (`matrix.suite`, `steps.key.outputs.key`, `needs.golden.outputs.matrix`,
`strategy.job-index`), literals, `! == != < <= > >= && ||` with GitHub's loose comparison,
the functions `fromJSON toJSON hashFiles contains startsWith endsWith format join` and the
status functions. Anything else is an error that names the expression: it never guesses.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

from vmlab.errors import ConfigError

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|<=|>=|&&|\|\||[!<>()\[\].,])
                        |(?P<name>[A-Za-z_][A-Za-z0-9_-]*))""", re.VERBOSE)
STATUS_FUNCTIONS = ("success", "failure", "always", "cancelled")


class ExpressionError(ConfigError):
    """A workflow expression the rehearsal cannot read (exit code 2: it cannot start)."""


def _tokens(text: str) -> List[Tuple[str, str]]:
    out, at = [], 0
    while at < len(text.rstrip()):
        m = _TOKEN.match(text, at)
        if not m or m.end() == at:
            raise ExpressionError(f"cannot read {text.strip()!r} at {text[at:].strip()[:20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        at = m.end()
    return out


def _number(value: Any) -> float:
    """GitHub's coercion to a number, for comparing values of different types."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else 0.0
        except ValueError:
            return math.nan
    return math.nan


def _compare(a: Any, b: Any) -> Tuple[Any, Any]:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower(), b.lower()
    if type(a) is type(b) and not isinstance(a, (dict, list)):
        return a, b
    return _number(a), _number(b)


def truthy(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (None, False, 0, "")


def to_text(value: Any) -> str:
    """A value as `${{ }}` puts it into a string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    return str(value)


class _Parser:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, text: str, contexts: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]):
        self.text, self.toks, self.at = text, _tokens(text), 0
        self.contexts, self.functions = contexts, functions

    def fail(self, problem: str) -> ExpressionError:
        return ExpressionError(f"expression {self.text.strip()!r}: {problem}")

    def peek(self) -> str:
        return self.toks[self.at][1] if self.at < len(self.toks) else ""

    def take(self, expected: str = "") -> Tuple[str, str]:
        if self.at >= len(self.toks) or (expected and self.toks[self.at][1] != expected):
            raise self.fail(f"expected {expected or 'more'} at {self.peek() or 'the end'!r}")
        self.at += 1
        return self.toks[self.at - 1]

    def parse(self) -> Any:
        value = self.or_()
        if self.at != len(self.toks):
            raise self.fail(f"unexpected {self.peek()!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            value = value if truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.comparison()
        while self.peek() == "&&":
            self.take()
            right = self.comparison()
            value = right if truthy(value) else value
        return value

    def comparison(self) -> Any:
        value = self.unary()
        while self.peek() in ("==", "!=", "<", "<=", ">", ">="):
            op = self.take()[1]
            a, b = _compare(value, self.unary())
            value = {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
                     ">": lambda: a > b, ">=": lambda: a >= b}[op]()
        return value

    def unary(self) -> Any:
        if self.peek() == "!":
            self.take()
            return not truthy(self.unary())
        return self.postfix(self.primary())

    def postfix(self, value: Any) -> Any:
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                kind, name = self.take()
                if kind != "name":
                    raise self.fail(f"a property name must follow '.', not {name!r}")
            else:
                name = to_text(self.or_())
                self.take("]")
            value = _property(value, name)
        return value

    def primary(self) -> Any:
        kind, tok = self.take()
        if kind == "num":
            return float(tok) if "." in tok else int(tok)
        if kind == "str":
            return tok[1:-1].replace("''", "'")
        if tok == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind != "name":
            raise self.fail(f"unexpected {tok!r}")
        if tok in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok]
        if self.peek() == "(":
            return self.call(tok)
        if tok not in self.contexts:
            raise self.fail(f"no context {tok!r} here; known: {', '.join(sorted(self.contexts))}")
        return self.contexts[tok]

    def call(self, name: str) -> Any:
        self.take("(")
        args = []
        while self.peek() != ")":
            args.append(self.or_())
            if self.peek() != ")":
                self.take(",")
        self.take(")")
        fn = self.functions.get(name.lower()) or BUILTINS.get(name.lower())
        if fn is None:
            raise self.fail(f"the rehearsal does not know the function {name}()")
        try:
            return fn(*args)
        except (TypeError, ValueError) as e:
            raise self.fail(f"{name}(): {e}") from None


def _property(value: Any, name: str) -> Any:
    """`a.b`: a missing property is null, as on GitHub; names are not case-sensitive."""
    if isinstance(value, dict):
        if name in value:
            return value[name]
        return next((v for k, v in value.items() if k.lower() == name.lower()), None)
    if isinstance(value, list) and name.isdigit():
        return value[int(name)] if int(name) < len(value) else None
    return None


def _format(template: str, *args: Any) -> str:
    out = re.sub(r"\{(\d+)\}", lambda m: to_text(args[int(m.group(1))]), template.replace("{{", "\0").replace(
        "}}", "\1"))
    return out.replace("\0", "{").replace("\1", "}")


BUILTINS: Dict[str, Callable[..., Any]] = {
    "fromjson": lambda text: json.loads(text),
    "tojson": lambda value: json.dumps(value, indent=2),
    "contains": lambda where, what: (any(_compare(x, what)[0] == _compare(x, what)[1] for x in where)
                                     if isinstance(where, list) else to_text(what).lower() in to_text(where).lower()),
    "startswith": lambda text, start: to_text(text).lower().startswith(to_text(start).lower()),
    "endswith": lambda text, end: to_text(text).lower().endswith(to_text(end).lower()),
    "format": _format,
    "join": lambda items, sep=",": to_text(sep).join(to_text(i) for i in items) if isinstance(items, list)
    else to_text(items),
}


def evaluate(text: str, contexts: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> Any:
    """The value of one expression (the text inside `${{ }}`)."""
    return _Parser(text, contexts, functions).parse()


def field(value: Any, contexts: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> Any:
    """A workflow value with its expressions evaluated: a value that is one `${{ }}` keeps its type
    (`matrix: ${{ fromJSON(...) }}` is a mapping); text around expressions makes a string."""
    if isinstance(value, dict):
        return {k: field(v, contexts, functions) for k, v in value.items()}
    if isinstance(value, list):
        return [field(v, contexts, functions) for v in value]
    if not isinstance(value, str):
        return value
    whole = EXPRESSION.fullmatch(value.strip())
    if whole:
        return evaluate(whole.group(1), contexts, functions)
    return EXPRESSION.sub(lambda m: to_text(evaluate(m.group(1), contexts, functions)), value)


def condition(text: Any, contexts: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> bool:
    """An `if:`: without a status function it means `success() && (...)`, as on GitHub."""
    if text is None or text == "":
        text = "success()"
    if isinstance(text, bool):
        text = "true" if text else "false"
    inner = str(text).strip()
    whole = EXPRESSION.fullmatch(inner)
    inner = whole.group(1) if whole else inner
    if not re.search(r"\b(" + "|".join(STATUS_FUNCTIONS) + r")\s*\(", inner):
        inner = f"success() && ({inner})"
    return truthy(evaluate(inner, contexts, functions))


def read_outputs(path: Path) -> Dict[str, str]:
    """$GITHUB_OUTPUT / $GITHUB_ENV: `name=value` lines and `name<<DELIMITER` blocks."""
    out: Dict[str, str] = {}
    lines = iter(path.read_text().splitlines()) if path.exists() else iter(())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            out[name] = "\n".join(itertools.takewhile(lambda x: x != delimiter, lines))
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        elif line.strip():
            raise ConfigError(f"{path}: {line[:60]!r} is not name=value nor name<<DELIMITER")
    return out


def hash_files(ws: Path, *patterns: str) -> str:
    """hashFiles(): the sha256 of the files' sha256 digests, in path order; '' when none match."""
    files = sorted({p for pattern in patterns for p in ws.glob(pattern) if p.is_file()})
    if not files:
        return ""
    total = hashlib.sha256()
    for path in files:
        total.update(hashlib.sha256(path.read_bytes()).digest())
    return total.hexdigest()


def expand_matrix(matrix: Any, where: str) -> List[Dict[str, Any]]:
    """A strategy.matrix as GitHub expands it: the product of its lists, minus `exclude`, plus `include`."""
    if not isinstance(matrix, dict):
        raise ConfigError(f"{where}: strategy.matrix is {type(matrix).__name__}, not a mapping")
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    for key, values in axes.items():
        if not isinstance(values, list):
            raise ConfigError(f"{where}: strategy.matrix.{key} is not a list")
    combos = [dict(zip(axes, c)) for c in itertools.product(*axes.values())] if axes else []
    combos = [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items())
                                           for ex in matrix.get("exclude") or [])]
    originals = list(combos)  # an include extends those it does not contradict, else it is a job of its own
    for extra in matrix.get("include") or []:
        fits = [c for c in originals if all(c[k] == v for k, v in extra.items() if k in axes)] if axes else []
        for combo in fits:
            combo.update(extra)
        if not fits:
            combos.append(dict(extra))
    if not combos:
        raise ConfigError(f"{where}: the matrix is empty, and GitHub would refuse the job")
    return combos
