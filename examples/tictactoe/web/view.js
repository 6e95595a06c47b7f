// web/view.js: the tic-tac-toe board in Rally's playground (docs/playground.md). It speaks the
// messages of README.md: `play` in the lobby, `move` in a match, and draws what comes back.
// The playground gives `mount` an element and the player's side of the socket.

// How a player asks the lobby for a match of each mode (the playground's "Request a match").
export const requests = { duel: JSON.stringify({ type: "play" }) };

const MARKS = { x: "✕", o: "◯", "-": "" };

export function mount(root, game) {
  root.innerHTML = `
    <style>
      .ttt-status { margin: .3em 0 .6em; min-height: 1.4em; }
      .ttt-board { display: grid; grid-template-columns: repeat(3, 4.5em); gap: 4px; }
      .ttt-board button { height: 4.5em; font-size: 1.4em; background: #fff; border: 2px solid #1d2330;
        border-radius: 4px; cursor: pointer; }
      .ttt-board button:disabled { cursor: default; color: #1d2330; }
      .ttt-board button.last { background: #fff6d6; }
      .ttt-record { color: #5b6275; margin-top: .6em; }
    </style>
    <div class="ttt" data-phase="lobby">
      <div class="ttt-status">Connect a client to start.</div>
      <button type="button" data-action="play">Find an opponent</button>
      <div class="ttt-board"></div>
      <div class="ttt-record"></div>
    </div>`;
  const box = root.querySelector(".ttt");
  const status = root.querySelector(".ttt-status");
  const play = root.querySelector("[data-action=play]");
  const board = root.querySelector(".ttt-board");
  const record = root.querySelector(".ttt-record");
  const cells = [];
  for (let cell = 0; cell < 9; cell += 1) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.cell = String(cell);
    button.disabled = true;
    button.addEventListener("click", () => game.send({ type: "move", cell }));
    board.append(button);
    cells.push(button);
  }
  play.addEventListener("click", () => game.send({ type: "play" }));

  let you = null;

  function draw(marks, turn, last) {
    box.dataset.board = marks;
    box.dataset.turn = turn ?? "";
    marks.split("").forEach((mark, cell) => {
      cells[cell].textContent = MARKS[mark] ?? "";
      cells[cell].disabled = mark !== "-" || turn !== you;
      cells[cell].classList.toggle("last", last?.cell === cell);
    });
    if (turn) status.textContent = turn === you ? "Your move." : "The opponent's move.";
  }

  function phase(name, text) {
    box.dataset.phase = name;
    status.textContent = text;
    play.hidden = name !== "lobby";
  }

  function message(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    switch (message.type) {
      case "welcome":
        record.textContent = `${message.game}: ${message.wins} won, ${message.losses} lost, ${message.draws} drawn`;
        break;
      case "searching":
        phase("searching", "Looking for an opponent…");
        break;
      case "waiting":
        you = message.you;
        box.dataset.you = you;
        phase("waiting", `You are ${MARKS[you]}. Waiting for the opponent…`);
        break;
      case "start":
        delete box.dataset.result;
        delete box.dataset.winner;
        you = message.you;
        box.dataset.you = you;
        phase("playing", "");
        draw(message.board, message.turn, null);
        break;
      case "state":
        draw(message.board, message.turn, message.last);
        break;
      case "illegal":
        status.textContent = `Not allowed: ${message.reason.replaceAll("_", " ")}.`;
        break;
      case "over": {
        draw(message.board, null, null);
        box.dataset.result = message.result;
        box.dataset.winner = message.winner ?? "";
        const outcome = message.winner === null ? "A draw." : message.winner === you ? "You win!" : "You lose.";
        phase("over", message.result === "forfeit" ? `The opponent left. ${outcome}` : outcome);
        break;
      }
      case "cancelled":
        phase("over", "The opponent never came: the game is off.");
        break;
    }
  }

  game.on((event) => {
    if (event.type === "message") {
      message(event.text);
    } else if (event.type === "runtime_assigned" && event.qualifier === "lobby") {
      // Back in a lobby (on arrival, or after a game): ready to play (again).
      const result = box.dataset.phase === "over" ? status.textContent + " " : "";
      phase("lobby", result + "Find an opponent when you are ready.");
    } else if (event.type === "connection" && event.state === "closed") {
      status.textContent = `Disconnected (${event.code}).`;
    }
  });
}
