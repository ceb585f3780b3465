// The viewer's own place as the leaderboard page shows it, from a `rank` event's data
// ({board, version, rank, score, gapToNext}): "you: #1,234 · 56 pts to #1,233".
const number = new Intl.NumberFormat("en-US");

export function rankText({ rank, gapToNext }) {
  if (rank === null || rank === undefined) return "you: not ranked yet";
  if (rank === 1 || gapToNext === null || gapToNext === undefined) return `you: #${number.format(rank)}`;
  const unit = gapToNext === 1 ? "pt" : "pts";
  return `you: #${number.format(rank)} · ${number.format(gapToNext)} ${unit} to #${number.format(rank - 1)}`;
}
