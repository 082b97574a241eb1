"""Built-in tasks on real offline data (see ``mpsearch.task.BUILTIN_TASKS``)."""
