"""The offline lm-eval tasks of hope_hf (tag ``hope_local``), shipped as package data: the task
YAMLs, their data under ``data/`` and ``local_data.py``, which lm-eval imports from the YAMLs'
folder. ``hope_hf.evaluation.lm_eval_entry`` puts this folder on lm-eval's task path; the data is
built by ``evaluation/build_local_tasks.py`` of the source repository."""
