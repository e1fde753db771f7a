"""xjobs: xAI's asynchronous work (deferred jobs, chat batches) run durably on AWS."""
