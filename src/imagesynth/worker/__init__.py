"""Workers: claim a task from the queue, have an engine make its images, check, label and
store them, finish the task (fenced). Runs in `imagesynth worker` processes and in the
in-process worker of `imagesynth serve`; never in an API-only process."""
