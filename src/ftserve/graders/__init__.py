"""OpenAI's graders, for reinforcement fine-tuning's rewards and the grader endpoints.

Imported by the API (graders/run, graders/validate) and by the engine (rewards), so nothing here imports
the service. Each grader scores one sample against one dataset item.
"""
