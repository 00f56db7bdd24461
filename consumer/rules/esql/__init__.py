"""ES|QL: parse a query once, then judge CloudTrail events one at a time or run it as a table.

`compile_query(query, fields)` -> `CompiledQuery` (see query.py); a query with STATS compiles
with `compile_aggregating_query` to an `AggregatingQuery` of mergeable partial states (see
aggregate.py), and `compile_esql` picks. Errors are `EsqlError`, located by line and column,
and `UnsupportedEsqlError` for valid ES|QL this engine cannot run.
"""

from consumer.rules.esql.aggregate import (
    AggregatingQuery,
    AggState,
    GroupKey,
    compile_aggregating_query,
    compile_esql,
)
from consumer.rules.esql.compiler import like_literal_chunks
from consumer.rules.esql.query import (
    CLOUDTRAIL_METADATA,
    CompiledQuery,
    FieldSpec,
    RowField,
    Table,
    compile_query,
)
from consumer.rules.esql.syntax import (
    Arith,
    Call,
    Compare,
    Const,
    EsqlError,
    Expr,
    FieldRef,
    InList,
    Interval,
    IsNull,
    Logical,
    Match,
    MvConst,
    Neg,
    Not,
    Star,
    UnsupportedEsqlError,
)

__all__ = [
    "CLOUDTRAIL_METADATA",
    "AggState",
    "AggregatingQuery",
    "Arith",
    "Call",
    "Compare",
    "CompiledQuery",
    "Const",
    "EsqlError",
    "Expr",
    "FieldRef",
    "FieldSpec",
    "GroupKey",
    "InList",
    "Interval",
    "IsNull",
    "Logical",
    "Match",
    "MvConst",
    "Neg",
    "Not",
    "RowField",
    "Star",
    "Table",
    "UnsupportedEsqlError",
    "compile_aggregating_query",
    "compile_esql",
    "compile_query",
    "like_literal_chunks",
]
