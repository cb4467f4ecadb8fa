"""Read-only views of the effective configuration: templates, policies, and the policy values
in effect for one session (``GET /v1/templates``, ``/v1/policies``, ``/v1/sessions/{id}/policy``).
"""

from __future__ import annotations

from fastapi import APIRouter

from dormant.api.principal import Who
from dormant.api.schemas import (
    PolicyList,
    PolicyOut,
    ResourcesOut,
    SessionPolicyOut,
    TemplateList,
    TemplateOut,
    VolumeOut,
)
from dormant.engine import Engine
from dormant.engine.templates import Template


def template_out(tpl: Template, default: bool) -> TemplateOut:
    return TemplateOut(
        name=tpl.name,
        default=default,
        runtime=tpl.runtime,
        image=tpl.image,
        command=list(tpl.command) if tpl.command else None,
        port=tpl.port,
        policy=tpl.policy,
        public=tpl.public,
        wake_timeout=tpl.wake_timeout,
        start_timeout=tpl.start_timeout,
        stop_timeout=tpl.stop_timeout,
        # Values the operator sets may be secrets (tokens, passwords): only their names.
        env_names=sorted(tpl.env),
        env_allow=list(tpl.env_allow),
        resources=ResourcesOut(
            cpus=tpl.resources.cpus,
            memory=tpl.resources.memory,
            pids_limit=tpl.resources.pids_limit,
        ),
        volumes=[
            VolumeOut(pattern=v.pattern, target=v.target, retain=v.retain, read_only=v.read_only)
            for v in tpl.volumes
        ],
        home=tpl.home,
        health_interval=tpl.health_interval,
    )


def build_catalog_router(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/templates", response_model=TemplateList)
    async def templates(who: Who) -> TemplateList:
        """Every template a session can be created from (names of operator-set variables,
        never their values). Errors: 401, 429, 503."""
        catalog = engine.catalog
        return TemplateList(
            items=[
                template_out(catalog.templates[name], name == catalog.default_template)
                for name in sorted(catalog.templates)
            ]
        )

    @router.get("/policies", response_model=PolicyList)
    async def policies(who: Who) -> PolicyList:
        """Every named policy with its values resolved (durations in seconds). Errors: 401,
        429, 503."""
        catalog = engine.catalog
        return PolicyList(
            items=[
                PolicyOut(name=name, values=catalog.policies[name].to_dict())
                for name in sorted(catalog.policies)
            ]
        )

    @router.get("/sessions/{session_id}/policy", response_model=SessionPolicyOut)
    async def session_policy(session_id: str, who: Who) -> SessionPolicyOut:
        """The policy values in effect for this session now. Errors: 401, 404 (unknown,
        deleted or another tenant's), 429, 503."""
        record = await engine.get(session_id, who.scope)
        return SessionPolicyOut(
            session_id=record.id,
            policy=record.policy_name,
            values=engine.policy_of(record).to_dict(),
        )

    return router
