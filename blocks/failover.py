"""The failover section of a stack as blocks: each region's database a source block of its own.

The stack's document (``DRStack.failover``) keeps the failover settings with each
region's ``postgres`` / ``mysql`` / ``redis`` replaced by its source block's slug
(``<block type slug>/<stack>-region-<region>-<kind>``), so region passwords live
in those blocks, as the sources' do, and never in the stack's document. The
credentials the DNS record and RDS name (``credentials``, ``aws_credentials``) stay
block names, resolved at use through the resolver installed here.
"""

from __future__ import annotations

from typing import Any

from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from blocks.sources import SOURCE_BLOCKS
from core.errors import ConfigError
from core.failover.topology import FailoverConfig, set_credentials_resolver

REGION_KINDS = ("postgres", "mysql", "redis")


def region_document(stack: str, region: str, kind: str) -> str:
    """The block document name of a region's database."""
    return f"{stack}-region-{region}-{kind}"


def save_failover(stack: str, failover: FailoverConfig) -> tuple[dict[str, Any], list[str]]:
    """Save each region database as a source block; returns the stack document's ``failover`` (block refs in
    place of the databases, no secret) and the slugs written."""
    written: list[str] = []
    data = failover.model_dump(mode="json", exclude={"regions": {"__all__": set(REGION_KINDS)}})
    for region, out in zip(failover.regions, data["regions"], strict=True):
        for kind in REGION_KINDS:
            db = getattr(region, kind)
            if db is None:
                continue
            block = SOURCE_BLOCKS[kind]
            document = region_document(stack, region.name, kind)
            block.model_validate(db.model_dump()).save(document, overwrite=True)
            out[kind] = f"{block.get_block_type_slug()}/{document}"
            written.append(out[kind])
    return data, written


def load_failover(data: dict[str, Any]) -> FailoverConfig:
    """The FailoverConfig of a stack document's ``failover``: each region's database loaded from its block."""
    regions = []
    for region in data.get("regions") or []:
        region = dict(region)
        for kind in REGION_KINDS:
            ref = region.get(kind)
            if ref is None:
                continue
            slug, _, document = str(ref).partition("/")
            block = SOURCE_BLOCKS[kind]
            where = f"stack block: failover region {region.get('name')!r} {kind}"
            try:
                if slug != block.get_block_type_slug() or not document:
                    raise ValueError(ref)
                region[kind] = block.load(document).to_config()
            except (ValueError, ObjectNotFound):
                raise ConfigError(f"{where}: block {ref!r} is missing or invalid; re-run 'genesis-dr apply'") from None
        regions.append(region)
    try:
        return FailoverConfig.model_validate({**data, "regions": regions})
    except ValidationError as exc:
        raise ConfigError(
            f"stack block: failover section was written by another version of genesis-dr "
            f"({exc.error_count()} problem(s)); re-run 'genesis-dr apply'"
        ) from None


def failover_credentials(provider: str, block_name: str) -> Any:
    """A DNS record's ``credentials`` or a region's ``aws_credentials``: the boto3 Session of an AwsCredentials
    block (aws) or the google Credentials of a GcpCredentials block (gcp)."""
    try:
        if provider == "aws":
            from prefect_aws import AwsCredentials

            return AwsCredentials.load(block_name).get_boto3_session()
        from prefect_gcp import GcpCredentials

        return GcpCredentials.load(block_name).get_credentials_from_service_account()
    except (ValueError, ObjectNotFound):
        kind, slug = (
            ("AwsCredentials", "aws-credentials") if provider == "aws" else ("GcpCredentials", "gcp-credentials")
        )
        raise ConfigError(
            f"failover: no {kind} block named {block_name!r}; create it (prefect block create {slug}) or drop the "
            "credentials setting to use the default chain"
        ) from None


# Core resolves the failover's credentials block names through this, at use.
set_credentials_resolver(failover_credentials)
