// A "Copy" button after every secret shown once (.secret-once): one click puts it on the
// clipboard (issue #14.7). No framework, no build step.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".secret-once").forEach(function (secret) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy-secret";
    button.textContent = document.documentElement.lang === "id" ? "Salin" : "Copy";
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(secret.textContent.trim()).then(function () {
        button.textContent = document.documentElement.lang === "id" ? "Tersalin" : "Copied";
      });
    });
    secret.insertAdjacentElement("afterend", button);
  });
});
