-- The response JSON policy of a native route (ext_proc/native_json.py), byte-identical to ext_proc's Python
-- path: ext_proc/session.py's response body handling with ext_proc/jsonbody.py parse(strict=False),
-- remove_names, set_field and dump. LuaJIT (Envoy's Lua is LuaJIT 2.1, Lua 5.1). Defines two locals and no
-- global: outrider_json_response(handle, p) for the filter, outrider_json_transform(raw, p, now_ms) for tests.
local outrider_json_response, outrider_json_transform
do
  local byte, sub, find, char, format, gsub = string.byte, string.sub, string.find, string.char, string.format,
    string.gsub
  local concat, tonumber, type, pcall, error, floor = table.concat, tonumber, type, pcall, error, math.floor

  -- Node kinds: a Lua string is a JSON string (UTF-8; a lone surrogate as its 3-byte WTF-8 form), a Lua
  -- number an integer of at most 15 digits (exact in a double), true/false, NULL, or a table tagged t.
  local NULL = {}
  local OBJ, ARR, BIG, FLT = 1, 2, 3, 4
  -- Python's json refuses integers of more digits (int_max_str_digits; jsonbody.MAX_INT_DIGITS).
  local MAX_INT_DIGITS = 4300
  -- jsonbody.parse(max_depth=plan.RESPONSE_MAX_DEPTH) refuses a document nested deeper, after the parse.
  local MAX_DEPTH = 256
  -- Deeper than this, Python's recursive C scanner stops at once (RecursionError → too_deep) instead of
  -- reading on to a later syntax error; the exact depth depends on the Python stack (recursion limit 1000).
  local RECURSION_DEPTH = 960

  local S, LONE  -- the document being read; whether a lone surrogate was read from it
  local function bad(reason) error({ reason = reason }, 0) end

  -- ---- UTF-8, as Python's strict decoder takes it ----
  -- Byte loops rather than string.find with a pattern: LuaJIT compiles byte() and sub(), not pattern
  -- matching, and leaving a compiled trace for every token made the parse 3-4 times slower.
  local function check_utf8(s)
    local i, n = 1, #s
    while i <= n do
      local c = byte(s, i)
      while c < 128 do
        i = i + 1
        if i > n then return end
        c = byte(s, i)
      end
      local need, lo, hi = 0, 128, 191
      if c >= 194 and c <= 223 then need = 1
      elseif c == 224 then need, lo = 2, 160
      elseif c == 237 then need, hi = 2, 159
      elseif c >= 225 and c <= 239 then need = 2
      elseif c == 240 then need, lo = 3, 144
      elseif c == 244 then need, hi = 3, 143
      elseif c >= 241 and c <= 243 then need = 3
      else bad("invalid_utf8") end
      if i + need > n then bad("invalid_utf8") end
      local c1 = byte(s, i + 1)
      if c1 < lo or c1 > hi then bad("invalid_utf8") end
      for k = i + 2, i + need do
        local ck = byte(s, k)
        if ck < 128 or ck > 191 then bad("invalid_utf8") end
      end
      i = i + need + 1
    end
  end

  local function utf8_char(cp)
    if cp < 128 then return char(cp) end
    if cp < 2048 then return char(192 + floor(cp / 64), 128 + cp % 64) end
    if cp < 65536 then
      return char(224 + floor(cp / 4096), 128 + floor(cp / 64) % 64, 128 + cp % 64)
    end
    return char(240 + floor(cp / 262144), 128 + floor(cp / 4096) % 64, 128 + floor(cp / 64) % 64, 128 + cp % 64)
  end

  -- ---- reading: Python's json.loads (its C scanner), one pass, the first error in document order ----
  local ESCAPES = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n", [114] = "\r",
    [116] = "\t" }
  local value

  local function skip(i)  -- past JSON whitespace; #S + 1 at the end
    local c = byte(S, i)
    while c == 32 or c == 10 or c == 13 or c == 9 do
      i = i + 1
      c = byte(S, i)
    end
    return i
  end

  local function special(j)  -- the next quote, backslash or raw control character from j, and its byte
    local c = byte(S, j)
    while c and c ~= 34 and c ~= 92 and c >= 32 do
      j = j + 1
      c = byte(S, j)
    end
    return j, c
  end

  local function digits_end(j)  -- the first position from j that is not an ASCII digit
    local c = byte(S, j)
    while c and c >= 48 and c <= 57 do
      j = j + 1
      c = byte(S, j)
    end
    return j
  end

  local function hex4(i)
    if not find(S, "^%x%x%x%x", i) then bad("invalid_json") end
    return tonumber(sub(S, i, i + 3), 16)
  end

  local function str(i)  -- i: the opening quote; returns the text and the position after the closing quote
    local j, c = special(i + 1)
    if not c then bad("invalid_json") end
    if c == 34 then return sub(S, i + 1, j - 1), j + 1 end
    local parts, n, start = {}, 0, i + 1
    while true do
      if c == 34 then
        n = n + 1; parts[n] = sub(S, start, j - 1)
        return concat(parts, "", 1, n), j + 1
      end
      if c ~= 92 then bad("invalid_json") end  -- a raw control character
      n = n + 1; parts[n] = sub(S, start, j - 1)
      local e = byte(S, j + 1)
      local simple = e and ESCAPES[e]
      if simple then
        n = n + 1; parts[n] = simple
        start = j + 2
      elseif e == 117 then
        local cp = hex4(j + 2)
        start = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF and byte(S, j + 6) == 92 and byte(S, j + 7) == 117 then
          local low = hex4(j + 8)
          if low >= 0xDC00 and low <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 1024 + (low - 0xDC00)
            start = j + 12
          end
        end
        if cp >= 0xD800 and cp <= 0xDFFF then LONE = true end
        n = n + 1; parts[n] = utf8_char(cp)
      else
        bad("invalid_json")
      end
      j, c = special(start)
      if not c then bad("invalid_json") end
    end
  end

  local function number(i)
    local j, c = i, byte(S, i)
    if c == 45 then j = j + 1; c = byte(S, j) end
    if c == 48 then j = j + 1
    elseif c and c >= 49 and c <= 57 then j = digits_end(j)
    else bad("invalid_json") end
    local int_end, is_float = j - 1, false
    if byte(S, j) == 46 then
      local e = digits_end(j + 1)
      if e > j + 1 then j, is_float = e, true end
    end
    c = byte(S, j)
    if c == 101 or c == 69 then
      local k = j + 1
      c = byte(S, k)
      if c == 43 or c == 45 then k = k + 1 end
      local e = digits_end(k)
      if e > k then j, is_float = e, true end
    end
    local text = sub(S, i, j - 1)
    if is_float then
      local x = tonumber(text)
      if not x then
        -- LuaJIT's scanner gives up on an exponent of too many digits; Python's float() reads it as
        -- inf (refused) or as a signed zero.
        local negative = byte(text, 1) == 45
        if find(text, "[eE]%-") or not find(text, "^-?[0.]*[1-9]") then
          x = negative and -0.0 or 0.0
        else
          bad("number_out_of_range")
        end
      end
      if x == 1 / 0 or x == -1 / 0 then bad("number_out_of_range") end
      return { t = FLT, x = x, s = text }, j
    end
    local digits = int_end - i + 1 - (byte(S, i) == 45 and 1 or 0)
    if digits > MAX_INT_DIGITS then bad("number_out_of_range") end
    if digits <= 15 then return tonumber(text), j end
    return { t = BIG, s = text }, j
  end

  local function word(i, w, v)
    if sub(S, i, i + #w - 1) ~= w then bad("invalid_json") end
    return v, i + #w
  end

  value = function(i, depth)
    local c = byte(S, i)
    if c == 34 then return str(i) end
    if c == 123 then
      depth = depth + 1
      if depth > RECURSION_DEPTH then bad("too_deep") end
      local keys, vals, pos, n = {}, {}, {}, 0
      local o = { t = OBJ, k = keys, v = vals, p = pos, d = depth }
      i = skip(i + 1)
      if byte(S, i) == 125 then return o, i + 1 end
      while true do
        if byte(S, i) ~= 34 then bad("invalid_json") end
        local key, v
        key, i = str(i)
        i = skip(i)
        if byte(S, i) ~= 58 then bad("invalid_json") end
        v, i = value(skip(i + 1), depth)
        -- As a Python dict: the last of duplicate keys wins, at the first one's place.
        local at = pos[key]
        if at then vals[at] = v else n = n + 1; keys[n] = key; vals[n] = v; pos[key] = n end
        i = skip(i)
        c = byte(S, i)
        if c == 125 then o.n = n; return o, i + 1 end
        if c ~= 44 then bad("invalid_json") end
        i = skip(i + 1)
      end
    end
    if c == 91 then
      depth = depth + 1
      if depth > RECURSION_DEPTH then bad("too_deep") end
      local a, n = { t = ARR, n = 0, d = depth }, 0
      i = skip(i + 1)
      if byte(S, i) == 93 then return a, i + 1 end
      while true do
        n = n + 1
        a[n], i = value(i, depth)
        i = skip(i)
        c = byte(S, i)
        if c == 93 then a.n = n; return a, i + 1 end
        if c ~= 44 then bad("invalid_json") end
        i = skip(i + 1)
      end
    end
    if c == 110 then return word(i, "null", NULL) end
    if c == 116 then return word(i, "true", true) end
    if c == 102 then return word(i, "false", false) end
    if c == 78 and sub(S, i, i + 2) == "NaN" then bad("non_standard_constant") end
    if c == 73 and sub(S, i, i + 7) == "Infinity" then bad("non_standard_constant") end
    if c == 45 and sub(S, i, i + 8) == "-Infinity" then bad("non_standard_constant") end
    return number(i)
  end

  local function max_depth(node)  -- containers only; a scalar document has depth 0
    local deepest = node.d
    local items = node.t == OBJ and node.v or node
    for k = 1, node.n or 0 do
      local v = items[k]
      if type(v) == "table" and v.d then
        local d = max_depth(v)
        if d > deepest then deepest = d end
      end
    end
    return deepest
  end

  local function parse(raw)
    check_utf8(raw)
    S, LONE = raw, false
    local i = 1
    if sub(raw, 1, 3) == "\239\187\191" then i = 4 end  -- a BOM is skipped, not written back
    local doc, j = value(skip(i), 0)
    if skip(j) <= #S then bad("invalid_json") end
    if type(doc) == "table" and doc.d and max_depth(doc) > MAX_DEPTH then bad("too_deep") end
    S = nil
    return doc
  end

  -- ---- the policy: jsonbody.remove_names, then set_field for each added field ----
  local function remove_names(node, names)
    if node.t == OBJ then
      local keys, vals, pos = node.k, node.v, node.p
      for k = 1, node.n or 0 do
        local key = keys[k]
        if key and names[key] then keys[k] = false; vals[k] = nil; pos[key] = nil end
      end
      for k = 1, node.n or 0 do
        local v = vals[k]
        if keys[k] and type(v) == "table" and v.d then remove_names(v, names) end
      end
    else
      for k = 1, node.n do
        local v = node[k]
        if type(v) == "table" and v.d then remove_names(v, names) end
      end
    end
  end

  local function put(o, key, v)  -- o[key] = v as a Python dict: a new key goes last
    local at = o.p[key]
    if at then o.v[at] = v; return end
    local n = (o.n or 0) + 1
    o.n = n; o.k[n] = key; o.v[n] = v; o.p[key] = n
  end

  local function set_field(doc, path, v)
    local node = doc
    for k = 1, #path - 1 do
      if type(node) ~= "table" or node.t ~= OBJ then return end
      local at = node.p[path[k]]
      local child = at and node.v[at]
      if not at then
        child = { t = OBJ, k = {}, v = {}, p = {}, n = 0, d = 0 }
        put(node, path[k], child)
      end
      node = child
    end
    if type(node) == "table" and node.t == OBJ then put(node, path[#path], v) end
  end

  -- ---- writing: Python's json.dumps(separators=(",", ":")), ensure_ascii False, else True ----
  local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
    ["\t"] = "\\t" }
  for b = 0, 31 do
    local ch = char(b)
    if not ESC[ch] then ESC[ch] = format("\\u%04x", b) end
  end
  ESC["\127"] = "\\u007f"  -- only used by the ASCII writer, whose pattern alone matches it

  local function u_escape(seq)
    local c, cp = byte(seq, 1), 0
    local n = #seq
    if n == 2 then cp = (c - 192) * 64 + byte(seq, 2) - 128
    elseif n == 3 then cp = (c - 224) * 4096 + (byte(seq, 2) - 128) * 64 + byte(seq, 3) - 128
    else cp = (c - 240) * 262144 + (byte(seq, 2) - 128) * 4096 + (byte(seq, 3) - 128) * 64 + byte(seq, 4) - 128 end
    if cp >= 0x10000 then
      cp = cp - 0x10000
      return format("\\u%04x\\u%04x", 0xD800 + floor(cp / 1024), 0xDC00 + cp % 1024)
    end
    return format("\\u%04x", cp)
  end

  local function escaped(s, ascii)  -- a string's JSON text without its quotes
    if ascii then
      s = gsub(s, '[%z\1-\31"\\\127]', ESC)
      return (gsub(s, "[\192-\247][\128-\191]*", u_escape))
    end
    for k = 1, #s do
      local c = byte(s, k)
      if c == 34 or c == 92 or c < 32 then return (gsub(s, '["\\%z\1-\31]', ESC)) end
    end
    return s
  end

  local function quote(s, ascii)
    return '"' .. escaped(s, ascii) .. '"'
  end

  local function incr(digits)  -- a decimal digit string plus one; true if it grew a digit
    local i = #digits
    while i > 0 and byte(digits, i) == 57 do i = i - 1 end
    if i == 0 then return "1" .. string.rep("0", #digits), true end
    return sub(digits, 1, i - 1) .. char(byte(digits, i) + 1) .. string.rep("0", #digits - i), false
  end

  -- repr(float): the shortest digits that read back as the same double, Python's layout.
  local function float_digits(x, text)
    -- A literal of at most 15 significant digits of a normal double is its own shortest form: two decimals
    -- of 15 digits are further apart than a double's spacing (10^15 < 2^53).
    local ax = x < 0 and -x or x
    if ax >= 2.2250738585072014e-308 then
      local mant, exp = text:match("^-?([%d.]+)[eE]?([-+]?%d*)$")
      local int, frac = mant:match("^(%d*)%.?(%d*)$")
      local all = int .. frac
      local lead = #(all:match("^0*"))
      local digits = all:sub(lead + 1):gsub("0+$", "")
      if #digits <= 15 then
        return digits, #int - lead + (tonumber(exp) or 0)
      end
    end
    for n = 0, 16 do
      local s = format("%." .. n .. "e", x)
      local d, e = s:match("^-?(%d[.%d]*)e([-+]%d+)$")
      d, e = gsub(d, "%.", ""), tonumber(e)
      if tonumber(s) == x then return (gsub(d, "0+$", "")), e + 1 end
      -- Next to a power of two the interval below x is half the one above: the nearest n-digit decimal
      -- may miss while its upper neighbour reads back, and that one is Python's shortest form.
      if math.frexp(ax) == 0.5 then
        local up, carry = incr(d)
        if tonumber((x < 0 and "-" or "") .. up .. "e" .. (e - n)) == x then
          return (gsub(up, "0+$", "")), e + 1 + (carry and 1 or 0)
        end
      end
    end
    local s = format("%.16e", x)  -- 17 digits always read back
    local d, e = s:match("^-?(%d[.%d]*)e([-+]%d+)$")
    return (gsub(gsub(d, "%.", ""), "0+$", "")), tonumber(e) + 1
  end

  local function float_repr(node)
    local x = node.x
    if x == 0 then return (1 / x < 0) and "-0.0" or "0.0" end
    local digits, point = float_digits(x, node.s)
    local sign = x < 0 and "-" or ""
    local n = #digits
    if point > 16 or point < -3 then
      local e = point - 1
      local mant = n > 1 and (sub(digits, 1, 1) .. "." .. sub(digits, 2)) or digits
      return format("%s%se%s%02d", sign, mant, e < 0 and "-" or "+", e < 0 and -e or e)
    end
    if point <= 0 then return sign .. "0." .. string.rep("0", -point) .. digits end
    if point >= n then return sign .. digits .. string.rep("0", point - n) .. ".0" end
    return sign .. sub(digits, 1, point) .. "." .. sub(digits, point + 1)
  end

  local write
  write = function(node, out, n, ascii)
    local kind = type(node)
    if kind == "string" then
      out[n + 1] = '"'; out[n + 2] = escaped(node, ascii); out[n + 3] = '"'
      return n + 3
    end
    if kind == "number" then
      n = n + 1; out[n] = format("%d", node); return n
    end
    if kind == "boolean" then
      n = n + 1; out[n] = node and "true" or "false"; return n
    end
    if node == NULL then n = n + 1; out[n] = "null"; return n end
    local t = node.t
    if t == OBJ then
      n = n + 1; out[n] = "{"
      local keys, vals, first = node.k, node.v, true
      for k = 1, node.n or 0 do
        local key = keys[k]
        if key then
          out[n + 1] = first and '"' or ',"'; out[n + 2] = escaped(key, ascii); out[n + 3] = '":'
          n = n + 3
          first = false
          n = write(vals[k], out, n, ascii)
        end
      end
      n = n + 1; out[n] = "}"
      return n
    end
    if t == ARR then
      n = n + 1; out[n] = "["
      for k = 1, node.n do
        if k > 1 then n = n + 1; out[n] = "," end
        n = write(node[k], out, n, ascii)
      end
      n = n + 1; out[n] = "]"
      return n
    end
    if t == BIG then
      n = n + 1; out[n] = node.s; return n
    end
    n = n + 1; out[n] = float_repr(node); return n
  end

  local function has_lone(node)  -- a string or key holding a lone surrogate (WTF-8: ED A0..BF ..)
    local kind = type(node)
    if kind == "string" then return find(node, "\237[\160-\191]") ~= nil end
    if kind ~= "table" or not node.d then return false end
    if node.t == OBJ then
      for k = 1, node.n or 0 do
        local key = node.k[k]
        if key and (has_lone(key) or has_lone(node.v[k])) then return true end
      end
    else
      for k = 1, node.n do if has_lone(node[k]) then return true end end
    end
    return false
  end

  local function dump(doc, maybe_lone)
    -- jsonbody.dump: UTF-8, unless a lone surrogate is left (not encodable): then all in ASCII escapes.
    local ascii = maybe_lone and has_lone(doc)
    local out = {}
    local n = write(doc, out, 0, ascii)
    return concat(out, "", 1, n)
  end

  -- ---- templates: literal text and ${now()} (templates.iso_time: RFC 3339 UTC, milliseconds) ----
  local function iso_time(ms)
    local secs = floor(ms / 1000)
    local days, rem = floor(secs / 86400), secs % 86400
    -- days since 1970-01-01 → civil date (Howard Hinnant's days_from_civil, inverted)
    local z = days + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    return format("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", y, m, d, floor(rem / 3600), floor(rem / 60) % 60,
      rem % 60, ms % 1000)
  end

  local function render(rule, now_ms)
    if rule.json ~= nil then  -- a literal number, boolean or null, as Python wrote it
      local j = rule.json
      if j == "null" then return NULL end
      if j == "true" then return true end
      if j == "false" then return false end
      if find(j, "^-?%d+$") then
        return (#j - (byte(j, 1) == 45 and 1 or 0) <= 15) and tonumber(j) or { t = BIG, s = j }
      end
      return { t = FLT, x = tonumber(j), s = j }
    end
    local parts = rule.parts
    local out = {}
    for k = 1, #parts do
      local part = parts[k]
      out[k] = part.text or iso_time(now_ms)  -- the only variable a native route may use: now()
    end
    return concat(out)
  end

  outrider_json_transform = function(raw, p, now_ms)
    local ok, result = pcall(function()
      local doc = parse(raw)
      local maybe_lone = LONE
      local remove = p.remove
      if remove and #remove > 0 then
        local names = {}
        for k = 1, #remove do names[remove[k]] = true end
        if type(doc) == "table" and doc.d then remove_names(doc, names) end
      end
      local add = p.add
      if add and #add > 0 and type(doc) == "table" and doc.t == OBJ then
        local values = {}
        for k = 1, #add do values[k] = render(add[k], now_ms) end
        for k = 1, #add do set_field(doc, add[k].path, values[k]) end
      end
      return dump(doc, maybe_lone)
    end)
    S = nil
    if ok then return true, result end
    if type(result) == "table" and result.reason then return false, result.reason end
    return false, "internal_error"  -- a bug here: refused, never passed on untransformed
  end

  -- ---- the response of a native request (ext_proc/session.py's branches, see native_json.py) ----
  local function is_json(ct)
    local base = ct:match("^([^;]*)")
    base = base:gsub("^[ \t\n\r\v\f\28-\31]+", ""):gsub("[ \t\n\r\v\f\28-\31]+$", ""):lower()
    return base == "application/json" or (sub(base, 1, 12) == "application/" and sub(base, -5) == "+json")
  end

  local function refuse(headers, body_buffer, request_id, keep)
    -- session.error_response(502, "bad_gateway", ...): json.dumps with ASCII escapes, content-type only,
    -- plus what Envoy adds to its local reply (the route's response_headers_to_add: `keep`).
    local body = '{"error":"bad_gateway","request_id":' .. quote(request_id, true) .. "}"
    local kept = {}
    for k = 1, keep and #keep or 0 do kept[keep[k]] = true end
    local names = {}
    for name, _ in pairs(headers) do names[#names + 1] = name end
    for k = 1, #names do
      if sub(names[k], 1, 1) ~= ":" and not kept[names[k]] then headers:remove(names[k]) end
    end
    headers:replace(":status", "502")
    headers:replace("content-type", "application/json")
    headers:replace("content-length", tostring(#body))
    if body_buffer then body_buffer:setBytes(body) end
    return body
  end

  -- A body of unknown length (chunked) on an oversize_body: pass route. body() would make Envoy answer 500
  -- past its buffer (the response is not streaming while a script holds it), where ext_proc, which gets
  -- such a body cut at that buffer (BUFFERED_PARTIAL), passes it on untouched. So the chunks are collected
  -- and cleared as they go by (the headers are on their way, as they are without a response headers
  -- message to ext_proc): past the limit all that was collected goes out in the current chunk and the rest
  -- streams untouched; at the end the last chunk carries the transformed document. A refusal cannot be a
  -- 502 any more: the body stays empty (ext_proc can only reset the stream then; neither passes a byte).
  local function outrider_json_stream(handle, p, request_id)
    local parts, n, size, last = {}, 0, 0, nil
    local limit = p.max_body_bytes < p.hold_bytes and p.max_body_bytes or p.hold_bytes
    for chunk in handle:bodyChunks() do
      if parts then
        local length = chunk:length()
        size = size + length
        if length > 0 then n = n + 1; parts[n] = chunk:getBytes(0, length) end
        if size > limit then
          chunk:setBytes(concat(parts, "", 1, n))
          parts = nil
        else
          chunk:setBytes("")
        end
      end
      last = chunk
    end
    if not parts or size == 0 or not last then return end
    local ok, out = outrider_json_transform(concat(parts, "", 1, n), p, handle:timestamp())
    if not ok then
      handle:logWarn("outrider: response_json_" .. out .. " (response begun: body dropped, request " ..
        request_id .. ")")
      return
    end
    last:setBytes(out)
  end

  outrider_json_response = function(handle, p)
    local remove, add = p.remove, p.add
    if not ((remove and #remove > 0) or (add and #add > 0)) then return end
    local headers = handle:headers()
    local ct = headers:get("content-type")
    if not ct or not is_json(ct) then return end
    local marks = handle:streamInfo():dynamicMetadata():get(p.namespace or "outrider.native_policy")
    local request_id = (marks and marks.request_id) or ""
    local status = headers:get(":status")
    if status == "204" or status == "304" then return end  -- no body, whatever content-length says
    local declared = tonumber(headers:get("content-length") or "")
    if declared and declared > 0 and (declared > p.max_body_bytes or declared > p.hold_bytes) then
      -- More than the route transforms, or than Envoy could hold for Python: never buffered here.
      if p.oversize_reject then
        -- The headers go out with the first chunk: turned into the error's first, then every chunk of the
        -- upstream's body is cleared and the last one carries the error body.
        local error_body = refuse(headers, nil, request_id, p.keep_headers)
        local last
        for chunk in handle:bodyChunks() do chunk:setBytes(""); last = chunk end
        if last then last:setBytes(error_body) end
      end
      return
    end
    if not declared and not p.oversize_reject then
      return outrider_json_stream(handle, p, request_id)
    end
    local body = handle:body()
    if not body then return end
    -- A wrapper from before the script yielded (body() does) is stale: "object used outside of proper scope".
    headers = handle:headers()
    local size = body:length()
    if size == 0 then return end
    if size > p.max_body_bytes then
      if p.oversize_reject then refuse(headers, body, request_id, p.keep_headers) end
      return
    end
    local ok, out = outrider_json_transform(body:getBytes(0, size), p, handle:timestamp())
    if not ok then
      handle:logWarn("outrider: response_json_" .. out)
      refuse(headers, body, request_id, p.keep_headers)
      return
    end
    body:setBytes(out)
    headers:replace("content-length", tostring(#out))
  end
end
