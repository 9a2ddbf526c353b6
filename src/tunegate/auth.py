"""API keys, organisations and projects: creating keys, checking bearer tokens, the local admin key.

Keys are random bearer tokens stored only as sha256 hashes. Every key belongs to an organisation
(and a project inside it); every stored object carries its organisation, and lookups filter on it,
so another organisation's ids behave exactly like unknown ids.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tunegate.audit import record
from tunegate.db import ApiKey, Database, Organization, Project
from tunegate.errors import AuthenticationError, InvalidRequestError
from tunegate.ids import new_id

KEY_PREFIX = "tg-"
ADMIN_KEY_FILE = "admin_key"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's organisation, project and role.

    member: uses its organisation's files, jobs and models. admin: also its organisation's policy,
    gate overrides and audit log. operator (the key made at first start): an admin with
    platform-wide powers (every organisation's audit log)."""

    org_id: str
    org_name: str
    project_id: str
    key_id: str
    is_admin: bool
    is_operator: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _valid_org_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidRequestError(
            "Organisation names are 1-64 characters of letters, digits, '-', '_' or '.'.", param="org"
        )
    return name


def get_or_create_org(db: Database, name: str) -> tuple[str, str]:
    """(org_id, default project_id) for organisation `name`, created on first use."""
    name = _valid_org_name(name)
    with db.session() as s:
        org = s.scalar(select(Organization).where(Organization.name == name))
        if org is None:
            org = Organization(id=new_id("org", 8), name=name, policy={})
            s.add(org)
            s.flush()
            s.add(Project(id=new_id("proj", 8), org_id=org.id, name="default"))
        s.flush()
        project = s.scalar(select(Project).where(Project.org_id == org.id).order_by(Project.created_at))
        return org.id, project.id


def create_key(db: Database, org: str, *, admin: bool = False, operator: bool = False, actor: str = "cli") -> str:
    """Create an API key for organisation `org` (created if new). Returns the secret, shown once.
    An operator key is always an admin key too."""
    admin = admin or operator
    org_id, project_id = get_or_create_org(db, org)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key", 8)
    with db.session() as s:
        s.add(
            ApiKey(
                id=key_id,
                org_id=org_id,
                project_id=project_id,
                key_hash=hash_key(secret),
                prefix=secret[:8],
                is_admin=admin,
                is_operator=operator,
            )
        )
    record(
        db, "key.created", org_id=org_id, actor=actor, object_id=key_id, details={"admin": admin, "operator": operator}
    )
    return secret


def authenticate(db: Database, authorization: str | None) -> Principal:
    if not authorization:
        raise AuthenticationError("You didn't provide an API key. Pass it as `Authorization: Bearer <key>`.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("Malformed Authorization header. Use `Authorization: Bearer <key>`.")
    with db.session() as s:
        row = s.execute(
            select(ApiKey, Organization.name)
            .join(Organization, Organization.id == ApiKey.org_id)
            .where(ApiKey.key_hash == hash_key(token.strip()), ApiKey.revoked_at.is_(None))
        ).first()
    if row is None:
        raise AuthenticationError()
    key, org_name = row
    return Principal(
        org_id=key.org_id,
        org_name=org_name,
        project_id=key.project_id,
        key_id=key.id,
        is_admin=key.is_admin or key.is_operator,
        is_operator=key.is_operator,
    )


def ensure_admin_key(db: Database, data_dir: Path) -> str | None:
    """On first start, create a local admin key and write it to the data dir. Returns it if new."""
    path = data_dir / ADMIN_KEY_FILE
    with db.session() as s:
        has_keys = s.scalar(select(ApiKey.id).limit(1)) is not None
    if has_keys:
        return None
    secret = create_key(db, "local", operator=True, actor="bootstrap")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def read_admin_key(data_dir: Path) -> str | None:
    path = data_dir / ADMIN_KEY_FILE
    return path.read_text().strip() if path.exists() else None
