-- common.lua - helpers shared by the miltergw miltertest scripts.
-- The gateway's port comes from the environment (MGW_PORT); the socket is given in
-- Sendmail syntax. miltertest does not print a Lua error() message: print it first.

function fail(msg)
	print("FAIL: " .. msg)
	error(msg)
end

local port = os.getenv("MGW_PORT")
if port == nil or port == "" then
	fail("MGW_PORT is not set")
end
MGW_SOCKET = "inet:" .. port .. "@127.0.0.1"

-- mt.* functions return nil on success or an error string
function check(rc, what)
	if rc ~= nil then
		fail(what .. " failed: " .. tostring(rc))
	end
end

local function letter(r)
	if type(r) == "number" and r > 0 and r < 256 then
		return string.format("'%s' (%d)", string.char(r), r)
	end
	return tostring(r)
end

-- check the last reply of conn
function expect(conn, want, what)
	local r = mt.getreply(conn)
	if r ~= want then
		fail(what .. ": reply " .. letter(r) .. ", expected " .. letter(want))
	end
end

-- run mt.<step>(conn, ...) and expect reply want
function step(conn, want, what, fn, ...)
	check(fn(conn, ...), what)
	expect(conn, want, what)
end

function connect()
	local conn = mt.connect(MGW_SOCKET, 20, 0.05)
	if conn == nil then
		fail("mt.connect(" .. MGW_SOCKET .. ") failed")
	end
	return conn
end

function passed(name)
	print("mgwtest: " .. name .. " passed")
end
