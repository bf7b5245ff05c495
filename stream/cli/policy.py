"""`lamstream evaluate policy`: off-policy estimates of a candidate policy from feedback."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from model.policy.ope import evaluate, policy_target, shadow_target, slate_epsilon
from model.policy.policies import parse_policy
from stream.cli._common import FeedbackOpt, JsonOpt, errors
from stream.feedback.source import load_feedback


def evaluate_policy(
    feedback: FeedbackOpt,
    policy: Annotated[str, typer.Option(help="Candidate policy: shadow (as logged by "
                                        "LAMSTREAM_POLICY_SHADOW), greedy, "
                                        "epsilon_greedy:EPS or softmax:T (recomputed from the "
                                        "logged candidate scores).")] = "shadow",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and cross-fitting.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DR) of a candidate policy.

    IPS, self-normalised IPS and doubly-robust estimates (95% bootstrap CIs) of a candidate
    policy's mean reward per recommendation, next to the logged policy's observed value; for
    greedy / epsilon-greedy candidates and logs also the slate-level IPS and SNIPS, which hold
    when the items of a slate interact (users stop at the first item they like).
    """
    with errors():
        records = load_feedback(feedback)
        if policy == "shadow":
            result = evaluate(records, shadow_target, bootstrap=bootstrap, seed=seed)
        else:
            pol = parse_policy(policy)
            result = evaluate(records, policy_target(pol), bootstrap=bootstrap, seed=seed,
                              slate_eps=slate_epsilon(pol))
    result["policy"] = policy
    if json_out:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['n']} logged recommendations, candidate policy {policy} "
               f"(max weight {result['max_weight']}, effective n "
               f"{result['effective_sample_size']})")
    names = {"logged": "logged (observed)", "ips": "IPS", "snips": "SNIPS", "dr": "DR",
             "slate_ips": "slate IPS", "slate_snips": "slate SNIPS"}
    for key, name in names.items():
        if key in result:
            r = result[key]
            typer.echo(f"{name:>18}: {r['value']:.4f}  [{r['ci_low']:.4f}, {r['ci_high']:.4f}]")
    if "slate" in result:
        typer.echo(f"{'slate estimates':>18}: not computed: {result['slate']}")
    else:
        typer.echo("  (IPS/SNIPS/DR weigh items and assume an item's reward does not depend on "
                   "the rest of the slate; the slate estimates weigh whole slates and do not)")
