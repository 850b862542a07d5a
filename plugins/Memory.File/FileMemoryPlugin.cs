using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Memory.File;

/// <summary>Entry point of the <c>file</c> memory plugin.</summary>
public sealed class FileMemoryPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value that selects this backend.</summary>
    public const string Kind = "file";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder) =>
        builder.AddMemory<FileMemoryBackend, FileMemoryOptions>(Kind,
            "regions in files on tmpfs or disk (fallocate, hole punch), optionally persisted across restarts");
}
