// Names for containers created without one, in Docker's style ("focused_turing"): an adjective and the
// name of a scientist or engineer. Docker's list is much longer; a number is appended on a collision.

import { randomInt } from "node:crypto";

const LEFT = `
  admiring affectionate agitated amazing angry awesome blissful bold boring brave busy charming clever
  compassionate competent confident cool dazzling determined dreamy eager ecstatic elastic elated elegant
  epic exciting fervent festive flamboyant focused friendly frosty funny gallant gifted goofy gracious
  great happy hardcore heuristic hopeful hungry infallible inspiring intelligent jolly jovial keen kind
  laughing loving lucid magical modest musing mystifying naughty nervous nice nifty nostalgic objective
  optimistic peaceful pedantic pensive practical priceless quirky quizzical relaxed reverent romantic sad
  serene sharp silly sleepy stoic strange stupefied suspicious sweet tender thirsty trusting unruffled
  upbeat vibrant vigilant vigorous wizardly wonderful xenodochial youthful zealous zen
`
  .trim()
  .split(/\s+/);

const RIGHT = `
  agnesi albattani allen archimedes babbage banach bardeen bartik bell blackwell bohr booth borg bose
  brahmagupta brattain cannon cerf chandrasekhar clarke curie darwin davinci dijkstra einstein elion
  engelbart euclid euler faraday fermat fermi feynman franklin galileo gauss goldberg goodall hamilton
  hawking heisenberg hodgkin hofstadter hopper hypatia jackson jennings johnson kalam kepler knuth
  kowalevski lamport leakey liskov lovelace lumiere mccarthy mclean meitner mendel minsky morse newton
  nobel noether pascal pasteur payne perlman pike poincare ptolemy raman ramanujan ritchie rosalind sammet
  shannon shockley sinoussi stonebraker swanson tesla thompson torvalds turing varahamihira villani
  wescoff wiles williams wilson wing wozniak wright yalow yonath
`
  .trim()
  .split(/\s+/);

/** "adjective_surname"; with `retry` > 0 a digit is appended, as Docker does after a collision. */
export function randomName(retry = 0): string {
  let name = `${LEFT[randomInt(LEFT.length)]}_${RIGHT[randomInt(RIGHT.length)]}`;
  if (name === "boring_wozniak") name = "focused_wozniak"; // Steve Wozniak is not boring (Docker's rule)
  return retry > 0 ? `${name}${randomInt(10)}` : name;
}
