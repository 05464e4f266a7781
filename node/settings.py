"""Typed settings, loaded from settings.toml and validated at start-up.

Every error names the key and the bad value, e.g.
``settings.toml: rules[0].pipeline = 'ct-denoize': Unknown pipeline ...``.
Nothing in the file is ever evaluated as code.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from node.errors import ConfigError
from pipelines.base import PipelineError, Registry, unknown_option_message

#: Environment variable naming the settings file (``radnode serve`` default).
CONFIG_ENV = "RADNODE_CONFIG"
DEFAULT_CONFIG = Path("settings.toml")

Port = Annotated[int, Field(ge=1, le=65535)]
# PS3.5 6.2: an AE title is at most 16 characters of the default repertoire,
# no backslash, no control characters, not all spaces.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)"
        )
    return value.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Strict):
    """The ``[node.tls]`` table: a second, TLS-protected DICOM port."""

    port: Port
    cert: Path
    key: Path
    ca: Path | None = None  # when set, callers must present a certificate it issued


class NodeSettings(_Strict):
    """The ``[node]`` table: identity, network, storage."""

    ae_title: str = "RADNODE"
    host: str = "0.0.0.0"
    port: Port = 11112
    data_dir: Path = Path("var")
    database_url: str = "sqlite:///var/radnode.db"
    allowed_calling_ae: list[str] = Field(default_factory=list)
    workers: Annotated[int, Field(ge=0, le=64)] = 1
    #: Build every rule's pipeline at start-up instead of at its first job.
    warm_up: bool = True
    content_qualification: Literal["RESEARCH", "PRODUCT"] = "RESEARCH"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8480
    # The API is unauthenticated and /audit returns patient IDs: loopback
    # unless the site puts it on a management network on purpose.
    http_host: str = "127.0.0.1"
    max_pdu: Annotated[int, Field(ge=0)] = 0
    signing_key: Path | None = None
    signing_cert: Path | None = None
    uid_root: str | None = None
    tls: TlsSettings | None = None

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str | None) -> str | None:
        # generate_uid appends up to 39 digits; the whole UID must fit 64.
        if value is not None and (
            not re.match(r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$", value) or len(value) > 24
        ):
            raise ValueError(
                f"{value!r} is not a UID root "
                "(digits and dots, ending in a dot, at most 24 characters)"
            )
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_calling_ae")
    @classmethod
    def _allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("sqlite") and (value.rstrip("/") == "sqlite:" or ":memory:" in value):
            raise ValueError(f"{value!r}: an in-memory database would lose everything at a restart")
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError(
                f"{value!r} is not a supported database URL "
                "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
            )
        return value

    @model_validator(mode="after")
    def _key_pair(self) -> NodeSettings:
        if (self.signing_key is None) != (self.signing_cert is None):
            raise ValueError("signing_key and signing_cert must be given together")
        if self.tls is not None and self.tls.port == self.port:
            raise ValueError(f"tls.port {self.tls.port} is the same as port")
        return self


class CompletionSettings(_Strict):
    """The ``[completion]`` table: when a series counts as complete."""

    quiet_seconds: Annotated[float, Field(gt=0, le=86400)] = 5.0
    sweep_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0


class DeliverySettings(_Strict):
    """The ``[delivery]`` table: retries of C-STORE to destinations."""

    # With these defaults a destination may be down for about three days
    # (maintenance windows, outages) before a delivery is given up.
    max_attempts: Annotated[int, Field(ge=1, le=100000)] = 300
    backoff_initial_seconds: Annotated[float, Field(gt=0)] = 5.0
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 900.0
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0


class JobSettings(_Strict):
    """The ``[jobs]`` table: the processing queue."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    lease_seconds: Annotated[float, Field(ge=5)] = 300.0
    #: A job still running after this long is failed (and retried) and its
    #: worker replaced; 0 = no limit.
    timeout_seconds: Annotated[float, Field(ge=0)] = 3600.0


class RetentionSettings(_Strict):
    """The ``[retention]`` table: how long spooled inputs and outputs are kept."""

    keep_days: Annotated[float, Field(ge=0)] = 7.0


Name = Annotated[str, Field(min_length=1, max_length=64)]


class DicomDestination(_Strict):
    """A DICOM peer that outputs are sent to with C-STORE."""

    type: Literal["dicom"] = "dicom"
    name: Name
    ae_title: str
    host: str
    port: Port
    calling_ae_title: str | None = None
    tls: bool = False
    tls_ca: Path | None = None  # verify the peer against this CA (else the system store)
    tls_cert: Path | None = None  # client certificate, when the peer asks for one
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _client_pair(self) -> DicomDestination:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)


class FolderDestination(_Strict):
    """A directory that outputs are copied to (for sites that import files)."""

    type: Literal["folder"]
    name: Name
    path: Path


def _destination_type(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "dicom"))
    return str(getattr(value, "type", "dicom"))


Destination = Annotated[
    Annotated[DicomDestination, Tag("dicom")] | Annotated[FolderDestination, Tag("folder")],
    Discriminator(_destination_type),
]


class RegexMatch(_Strict):
    """``{regex = "..."}``: the attribute's string value must match (re.search)."""

    regex: str


class RangeMatch(_Strict):
    """``{min = .., max = ..}``: the attribute's numeric value must lie within."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RangeMatch:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


Scalar = str | int | float
MatchValue = Scalar | list[Scalar] | RegexMatch | RangeMatch


class Rule(_Strict):
    """A ``[[rules]]`` entry: which series go through which pipeline, and where."""

    name: Name
    pipeline: str
    destinations: list[str] = Field(min_length=1)
    match: dict[str, MatchValue] = Field(default_factory=dict)
    output: Literal["secondary-capture", "derived"] = "secondary-capture"
    label: bool = False
    series_number_offset: Annotated[int, Field(ge=0, le=100000)] = 1000
    description_marker: Annotated[str, Field(min_length=1, max_length=32)] = "AI ENHANCED"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("match", mode="before")
    @classmethod
    def _match_values(cls, match: object) -> dict[str, object]:
        if not isinstance(match, dict):
            raise ValueError("match must be a table of DICOM keyword = value")
        return {str(k): _match_value(str(k), v) for k, v in match.items()}


def _match_value(keyword: str, value: object) -> object:
    """Check one ``match`` entry; errors read ``Keyword = value: problem``."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} = {value!r}: {keyword!r} is not a DICOM keyword")
    if dictionary_VR(tag) == "SQ":
        raise ValueError(f"{keyword} = {value!r}: {keyword!r} is a sequence and cannot be matched")
    if isinstance(value, bool):
        raise ValueError(f"{keyword} = {value!r}: expected a string or number, not a boolean")
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, list):
        if not value or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{keyword} = {value!r}: a list must hold strings or numbers")
        return value
    if isinstance(value, dict) and set(value) == {"regex"}:
        pattern = value["regex"]
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(
                f"{keyword} = {value!r}: not a valid regular expression: {exc}"
            ) from None
        return RegexMatch(regex=pattern)
    if isinstance(value, dict) and value and set(value) <= {"min", "max"}:
        try:
            return RangeMatch.model_validate(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{keyword} = {value!r}: {problem}") from None
    raise ValueError(
        f"{keyword} = {value!r}: expected a value, a list of values, "
        '{regex = "..."} or {min = ..., max = ...}'
    )


class Settings(_Strict):
    """All of radnode's settings."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    destinations: list[Destination] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        names = [d.name for d in self.destinations]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _KeyError(f"destinations[{i}].name", name, "duplicate destination name")
        rule_names: list[str] = []
        for i, rule in enumerate(self.rules):
            if rule.name in rule_names:
                raise _KeyError(f"rules[{i}].name", rule.name, "duplicate rule name")
            rule_names.append(rule.name)
            for j, dest in enumerate(rule.destinations):
                if dest not in names:
                    raise _KeyError(
                        f"rules[{i}].destinations[{j}]",
                        dest,
                        unknown_option_message("destination", dest, names),
                    )
        return self

    def destination(self, name: str) -> DicomDestination | FolderDestination:
        """The destination called ``name`` (validated to exist for every rule)."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise ConfigError(
            unknown_option_message("destination", name, [d.name for d in self.destinations])
        )

    def rule(self, name: str) -> Rule:
        """The rule called ``name``."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise ConfigError(unknown_option_message("rule", name, [r.name for r in self.rules]))

    def resolve_paths(self, base: Path, registry: Registry | None = None) -> Settings:
        """Make relative paths relative to ``base``.

        data_dir, the SQLite file, keys, certificates, folder destinations,
        and with a ``registry`` the rules' path parameters (site weights).
        """
        node = self.node
        data_dir = node.data_dir if node.data_dir.is_absolute() else base / node.data_dir
        url = node.database_url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url[len(prefix) :].startswith("/") and url != prefix:
            url = prefix + str(base / url[len(prefix) :])
        tls = node.tls
        if tls is not None:
            tls = tls.model_copy(
                update={
                    "cert": _under(base, tls.cert),
                    "key": _under(base, tls.key),
                    "ca": _under(base, tls.ca),
                }
            )
        new_node = node.model_copy(
            update={
                "data_dir": data_dir,
                "database_url": url,
                "signing_key": _under(base, node.signing_key),
                "signing_cert": _under(base, node.signing_cert),
                "tls": tls,
            }
        )
        destinations = [
            d.model_copy(
                update={
                    "tls_ca": _under(base, d.tls_ca),
                    "tls_cert": _under(base, d.tls_cert),
                    "tls_key": _under(base, d.tls_key),
                }
            )
            if isinstance(d, DicomDestination)
            else d.model_copy(update={"path": _under(base, d.path)})
            for d in self.destinations
        ]
        rules = [
            rule.model_copy(update={"params": _params_under(base, rule, registry)})
            for rule in self.rules
        ]
        return self.model_copy(
            update={"node": new_node, "destinations": destinations, "rules": rules}
        )


_KEYED = re.compile(r"^[\w.\[\]]+ = ")


def _params_under(
    base: Path, rule: Rule, registry: Registry | None
) -> dict[str, str | int | float | bool]:
    """A rule's params with its pipeline's relative path parameters made relative to ``base``."""
    params = dict(rule.params)
    if registry is None or rule.pipeline not in registry.names():
        return params
    for key in registry.entry(rule.pipeline).path_params:
        value = params.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            params[key] = str(base / value)
    return params


def _under(base: Path, path: Path | None) -> Any:
    """``path`` made absolute relative to ``base`` (None stays None)."""
    if path is None or path.is_absolute():
        return path
    return base / path


class _KeyError(ValueError):
    """A cross-field error that knows its own key path."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        super().__init__(f"{key} = {value!r}: {problem}")


def _format_location(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("dicom", "folder", "str", "int", "float", "list[union[str,int,float]]"):
            continue  # union/discriminator branch names, not keys
        elif part.startswith(("RegexMatch", "RangeMatch", "list[", "function-")):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _lookup(data: Any, loc: Sequence[int | str]) -> object:
    value = data
    for part in loc:
        in_dict = isinstance(value, dict) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and part < len(value)
        if in_dict or in_list:
            value = value[part]
        else:
            continue
    return value


def parse_settings(
    data: dict[str, Any],
    source: str = "settings.toml",
    registry: Registry | None = None,
    base: Path | None = None,
) -> Settings:
    """Validate a settings mapping into :class:`Settings`.

    Parameters
    ----------
    data
        The parsed TOML document.
    source
        Name used in error messages.
    registry
        When given, each rule's pipeline must be registered in it, and its
        parameters pass the pipeline's check (weights verified on a node
        that runs pipelines, i.e. with workers).
    base
        When given, relative paths are resolved against it (see
        :meth:`Settings.resolve_paths`) before the checks.

    Raises
    ------
    ConfigError
        Naming the key and the bad value.
    """
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            key = _format_location(loc)
            msg = err["msg"].removeprefix("Value error, ")
            if _KEYED.match(msg):
                # The validator already named the key below ``loc`` and the value.
                problems.append(f"{source}: {key}.{msg}" if key else f"{source}: {msg}")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{source}: {key}: unknown key")
            elif err["type"] == "missing":
                problems.append(f"{source}: {key}: required key is missing")
            else:
                problems.append(f"{source}: {key} = {_lookup(data, loc)!r}: {msg}")
        # One message per distinct problem, first the most specific.
        raise ConfigError("\n".join(dict.fromkeys(problems))) from None
    if base is not None:
        settings = settings.resolve_paths(base, registry)
    if registry is not None:
        known = registry.names()
        for i, rule in enumerate(settings.rules):
            if rule.pipeline not in known:
                raise ConfigError(
                    f"{source}: rules[{i}].pipeline = {rule.pipeline!r}: "
                    + unknown_option_message("pipeline", rule.pipeline, known)
                )
            try:
                entry = registry.entry(rule.pipeline)
            except PipelineError as exc:  # pragma: no cover - names() and entry() agree
                raise ConfigError(f"{source}: rules[{i}].pipeline: {exc}") from exc
            if entry.check is not None:
                try:
                    entry.check(rule.params, settings.node.workers > 0)
                except PipelineError as exc:
                    raise ConfigError(f"{source}: rules[{i}].params ({rule.name}): {exc}") from exc
                except OSError as exc:  # e.g. weights this user may not read
                    raise ConfigError(
                        f"{source}: rules[{i}].params ({rule.name}): cannot read "
                        f"{exc.filename!r}: {exc.strerror}"
                    ) from exc
    return settings


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The settings file: ``--config``, else ``$RADNODE_CONFIG``, else ./settings.toml."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG


def load_settings(path: Path, registry: Registry | None = None) -> Settings:
    """Read, validate and resolve the settings file at ``path``.

    Relative paths in the file are taken relative to the file's directory, so
    the node behaves the same whatever directory it is started from.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {str(path)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    return parse_settings(data, source=path.name, registry=registry, base=path.resolve().parent)
