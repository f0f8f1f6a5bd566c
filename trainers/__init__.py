"""Learners (GRPO on torch), the OpenRLHF integration, the gymnasium env and trajectory export.

The learning loop lands here; for now trainers drive episodes through `engine.env_client`.
"""
