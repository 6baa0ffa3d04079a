"""OrderFlow's resilience policies: retry, circuit breaker, timeouts, bulkhead, budget, hedging, fallback.

No web framework, task queue or ORM in here: the policies take clocks, sleeps and randomness as parameters,
and report every decision as an event to hooks (see `telemetry.py`).
"""

from .backoff import full_jitter_delay
from .budget import BudgetSpec, RetryBudget
from .bulkhead import Bulkhead, BulkheadRejectedError
from .circuit_breaker import (
    ADMIT,
    BUCKETS,
    CLOSED,
    HALF_OPEN,
    ISOLATED,
    NO_BUDGET,
    OPEN,
    PROBE,
    REJECT_HALF_OPEN,
    REJECT_ISOLATED,
    REJECT_OPEN,
    STATE_VALUES,
    Admission,
    BreakerSpec,
    BreakerStore,
    BrokenCircuitError,
    CircuitBreaker,
    CircuitSnapshot,
    LocalBreakerStore,
    Transition,
)
from .config import (
    BreakerConfig,
    BudgetConfig,
    BulkheadConfig,
    DependencyConfig,
    HedgingConfig,
    PolicyFileError,
    RetryConfig,
    duration,
    integer,
    parse_dependency,
    parse_table,
    positive_duration,
)
from .events import (
    AttemptFinished,
    BreakerTransition,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    FallbackExecuted,
    HedgeStarted,
    RetryScheduled,
    TimeoutOccurred,
)
from .fallback import Fallback
from .hedging import HedgingPolicy
from .pipeline import Attempt, ResiliencePipeline, build_pipeline
from .retry import Outcome, RetryPolicy, is_retryable_status
from .telemetry import LoggingHook, RecordingHook
from .timeout import AttemptTimeoutError, ResilienceTimeoutError, TotalTimeoutError

__all__ = [
    # the policies
    "Attempt",
    "AttemptTimeoutError",
    "BrokenCircuitError",
    "Bulkhead",
    "BulkheadRejectedError",
    "CircuitBreaker",
    "CircuitSnapshot",
    "Fallback",
    "HedgingPolicy",
    "LocalBreakerStore",
    "LoggingHook",
    "Outcome",
    "PolicyFileError",
    "RecordingHook",
    "ResiliencePipeline",
    "ResilienceTimeoutError",
    "RetryBudget",
    "RetryPolicy",
    "TotalTimeoutError",
    "build_pipeline",
    "full_jitter_delay",
    "is_retryable_status",
    # a dependency's policies, read from a policy file's table
    "BreakerConfig",
    "BudgetConfig",
    "BulkheadConfig",
    "DependencyConfig",
    "HedgingConfig",
    "RetryConfig",
    "duration",
    "integer",
    "parse_dependency",
    "parse_table",
    "positive_duration",
    # what the hooks receive
    "AttemptFinished",
    "BreakerTransition",
    "BudgetExhausted",
    "BulkheadRejected",
    "CallFinished",
    "FallbackExecuted",
    "HedgeStarted",
    "RetryScheduled",
    "TimeoutOccurred",
    # for stores that keep circuit state elsewhere (`BreakerStore`): what they answer and remember
    "ADMIT",
    "BUCKETS",
    "CLOSED",
    "HALF_OPEN",
    "ISOLATED",
    "NO_BUDGET",
    "OPEN",
    "PROBE",
    "REJECT_HALF_OPEN",
    "REJECT_ISOLATED",
    "REJECT_OPEN",
    "STATE_VALUES",
    "Admission",
    "BreakerSpec",
    "BreakerStore",
    "BudgetSpec",
    "Transition",
]
