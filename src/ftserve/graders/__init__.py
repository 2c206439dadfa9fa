"""OpenAI's graders, for reinforcement fine-tuning's rewards and the grader endpoints.

Imported by the API (graders/run, graders/validate) and by the engine (rewards), so nothing here imports
the service. Each grader scores one sample against one dataset item; `run_batch` scores many at once.
"""

from ftserve.graders.check import GraderInvalid, check_grader
from ftserve.graders.outcome import Errors, Judge, JudgeError, JudgeReply, Outcome
from ftserve.graders.run import run_batch, run_grader
from ftserve.graders.sandbox import PythonLimits
from ftserve.graders.text_similarity import Embed

__all__ = ["Embed", "Errors", "GraderInvalid", "Judge", "JudgeError", "JudgeReply", "Outcome", "PythonLimits",
           "check_grader", "run_batch", "run_grader"]
