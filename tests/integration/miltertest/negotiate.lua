-- negotiate.lua - option negotiation with everything offered, then a clean disconnect.
dofile((os.getenv("MGW_LUA_DIR") or ".") .. "/common.lua")

mt.set_timeout(10)
local conn = connect()
-- nil: miltertest offers libmilter's current defaults (version 6, all actions, all steps)
check(mt.negotiate(conn, nil, nil, nil), "mt.negotiate")
-- the connection is usable after negotiation
step(conn, SMFIR_CONTINUE, "mt.conninfo", mt.conninfo, "client.example", "127.0.0.1")
check(mt.disconnect(conn), "mt.disconnect")
passed("negotiate")
