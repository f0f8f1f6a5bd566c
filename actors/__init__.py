"""Embedded default backends of the four services (CPU only, no weights, no data downloads).

Import strings for cluster specs:

- ``"actors.patient:RecordPatient"``   service "patient"  (answers from the case record)
- ``"actors.examiner:RecordExaminer"`` service "examiner" (record, falling back to normal values)
- ``"actors.agent:RandomAgent"``       service "agent"    (random valid actions)
- ``"actors.agent:HeuristicAgent"``    service "agent"    (naive-Bayes clinician)
- ``"actors.judge:RulesJudge"``        service "judge"    (rule-based verdict and reward)
"""
