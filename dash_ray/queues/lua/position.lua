--[[
  A read, not a transition: the queue position of a waiting job.

  Input:
    KEYS[1] wait         BullMQ's wait list of its queue
    KEYS[2] prioritized  BullMQ's prioritized set of its queue

    ARGV[1] job_id

  Output:
    its place (1 = next), or -1
]]
--- @include "includes/queue_position"
return queue_position(K_wait, K_prioritized, A_job_id)
