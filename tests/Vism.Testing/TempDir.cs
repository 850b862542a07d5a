namespace Vism.Testing;

/// <summary>A fresh directory under /tmp, deleted on dispose. Short paths keep Unix socket names under 108 bytes.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir(string prefix = "vism")
    {
        Path = System.IO.Path.Combine("/tmp", $"{prefix}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string this[string name] => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
