"""How recommendations are shown and judged: exploration, reranker, OPE."""

__all__ = [
    "policies",
    "exploration",
    "reranker",
    "ope",
    "catalog",
]
