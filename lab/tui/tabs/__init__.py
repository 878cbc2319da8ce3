"""One module per tab of the console: config, monitor, calculator, queue, chat."""
