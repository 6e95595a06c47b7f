-- tictactoe/rules.lua: the rules of tic-tac-toe, shared by the server logic and the game's
-- client model. Cells are numbered 0..8 row by row, as in the messages (examples/tictactoe's
-- README); a board is a string of 9 characters, "x", "o" or "-" (empty). No engine calls.

local rules = {}

local LINES = {
    { 1, 2, 3 }, { 4, 5, 6 }, { 7, 8, 9 }, -- rows
    { 1, 4, 7 }, { 2, 5, 8 }, { 3, 6, 9 }, -- columns
    { 1, 5, 9 }, { 3, 5, 7 },              -- diagonals
}

rules.EMPTY_BOARD = "---------"

function rules.other(mark)
    return mark == "x" and "o" or "x"
end

-- The mark at `cell` (0..8).
function rules.at(board, cell)
    return board:sub(cell + 1, cell + 1)
end

-- `board` with `mark` at `cell`.
function rules.place(board, cell, mark)
    return board:sub(1, cell) .. mark .. board:sub(cell + 2)
end

-- The winning mark, "draw" when the board is full, or nil while the game goes on.
function rules.outcome(board)
    for _, line in ipairs(LINES) do
        local mark = board:sub(line[1], line[1])
        if mark ~= "-" and mark == board:sub(line[2], line[2]) and mark == board:sub(line[3], line[3]) then
            return mark
        end
    end
    if board:find("-", 1, true) then
        return nil
    end
    return "draw"
end

-- Why `mark` may not play `cell` on `board` when it is `turn`'s move in `phase` ("waiting",
-- "playing", "over"), or nil if it may. Checked in the README's order.
function rules.illegal_reason(phase, board, turn, mark, cell)
    if phase == "waiting" then
        return "not_started"
    elseif phase == "over" then
        return "game_over"
    elseif mark ~= turn then
        return "not_your_turn"
    elseif type(cell) ~= "number" or cell ~= math.floor(cell) or cell < 0 or cell > 8 then
        return "bad_cell"
    elseif rules.at(board, cell) ~= "-" then
        return "cell_taken"
    end
    return nil
end

-- A move for `mark`: one that wins, else one that blocks the other mark, else the centre, a
-- corner, a side. What the example's "hint" and the tests' players use.
function rules.suggest(board, mark)
    for _, candidate in ipairs({ mark, rules.other(mark) }) do
        for cell = 0, 8 do
            if rules.at(board, cell) == "-" and rules.outcome(rules.place(board, cell, candidate)) == candidate then
                return cell
            end
        end
    end
    for _, cell in ipairs({ 4, 0, 2, 6, 8, 1, 3, 5, 7 }) do
        if rules.at(board, cell) == "-" then
            return cell
        end
    end
    return nil
end

return rules
