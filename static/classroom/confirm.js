// Forms that ask before they submit: <form data-confirm="question">. An external script, not an
// inline onsubmit handler: the Content-Security-Policy allows no inline code.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset?.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
