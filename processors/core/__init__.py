"""Pure logic: no Faust, no Kafka, no clock. Every function takes `now` when it needs one."""
