// Copy buttons (issue #14): after every secret shown once (.secret-once) and beside every
// shortened id (.short-id[data-full], the whole id). No framework, no build step.
document.addEventListener("DOMContentLoaded", function () {
  var indonesian = document.documentElement.lang === "id";
  function addButton(after, className, label, text) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.textContent = label;
    button.title = indonesian ? "Salin" : "Copy";
    button.addEventListener("click", function (event) {
      event.preventDefault();
      navigator.clipboard.writeText(text()).then(function () {
        button.textContent = indonesian ? "Tersalin" : "Copied";
      });
    });
    after.insertAdjacentElement("afterend", button);
  }
  document.querySelectorAll(".secret-once").forEach(function (secret) {
    addButton(secret, "copy-secret", indonesian ? "Salin" : "Copy", function () {
      return secret.textContent.trim();
    });
  });
  document.querySelectorAll(".short-id[data-full]").forEach(function (id) {
    addButton(id, "copy-id", indonesian ? "salin" : "copy", function () {
      return id.dataset.full;
    });
  });
});
