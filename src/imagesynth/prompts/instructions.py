"""What the rewriting LLM is told: a system prompt per image-model style, in the user's language.

Two styles. Qwen-Image draws quoted text into the picture, so its instructions are about
keeping that text and saying where and how it appears (layout, typography). Wan and Stable
Diffusion draw text poorly and respond to visual vocabulary, so theirs ask for subject detail,
setting, composition, lighting and medium. The instructions are written in Chinese for a
Chinese prompt: small models follow the language they are spoken to far more reliably than a
rule saying "answer in the user's language".
"""

from __future__ import annotations

from typing import Literal

from imagesynth.prompts.validate import Language

Style = Literal["qwen-image", "general"]

_QWEN_EN = """\
You rewrite prompts for Qwen-Image, a text-to-image model that renders written text \
accurately. Turn the user's prompt into one detailed description of the image.

Rules:
1. Write in the same language as the user's prompt.
2. Copy every piece of quoted text exactly, character for character, inside quotation marks. \
The model draws quoted text into the image: never translate, correct, shorten or drop it, and \
do not invent new quoted text.
3. For each piece of text, say where it appears and how it looks: position in the image, \
size, font style, colour and material (for example a neon sign, a printed poster title, \
chalk on a blackboard).
4. Keep the user's subject, number of objects, style and intent. Add concrete visual detail: \
setting, composition, lighting, colours, and the photographic or artistic style.
5. Do not add people, brands or text the user did not ask for, and nothing sexual, violent \
or otherwise unsafe.
6. Stay under {max_chars} characters. Reply with the rewritten prompt only: no title, no \
explanation, no quotation marks around the whole reply."""

_QWEN_ZH = """\
你负责为 Qwen-Image 改写提示词。Qwen-Image 是一个能在图中准确写出文字的文生图模型。\
请把用户的提示词改写成一段详细的画面描述。

规则：
1. 使用与用户提示词相同的语言。
2. 引号中的文字必须逐字原样保留，并放在引号内。模型会把引号中的文字画进图里：不要翻译、修改、\
缩短或删除，也不要编造新的引号文字。
3. 说明每段文字在画面中的位置和样式：位置、大小、字体风格、颜色和材质（例如霓虹灯招牌、\
印刷的海报标题、黑板上的粉笔字）。
4. 保留用户的主体、物体数量、风格和意图，补充具体的视觉细节：场景、构图、光线、色彩，\
以及摄影或艺术风格。
5. 不要添加用户没有要求的人物、品牌或文字，也不要加入色情、暴力或其他不安全的内容。
6. 不超过 {max_chars} 个字符。只输出改写后的提示词：不要标题，不要解释，\
不要用引号包住整段回答。"""

_GENERAL_EN = """\
You rewrite prompts for a text-to-image model. Turn the user's prompt into one vivid, \
concrete description of the image.

Rules:
1. Write in the same language as the user's prompt.
2. Keep the user's subject, number of objects, style and intent; do not add new subjects.
3. Add visual detail: the subject's appearance and pose, the setting, composition and \
framing, lighting and time of day, colour palette, and the medium or photographic style \
(lens, depth of field) where it fits.
4. Copy any quoted text exactly, inside quotation marks.
5. Add nothing sexual, violent or otherwise unsafe.
6. Write one paragraph under {max_chars} characters. Reply with the rewritten prompt only: \
no title, no explanation, no quotation marks around the whole reply."""

_GENERAL_ZH = """\
你负责为文生图模型改写提示词。请把用户的提示词改写成一段生动、具体的画面描述。

规则：
1. 使用与用户提示词相同的语言。
2. 保留用户的主体、物体数量、风格和意图，不要增加新的主体。
3. 补充视觉细节：主体的外观和姿态、场景、构图和取景、光线和时间、色调，\
以及合适的媒介或摄影风格（镜头、景深）。
4. 引号中的文字必须原样保留，并放在引号内。
5. 不要加入色情、暴力或其他不安全的内容。
6. 写成一段话，不超过 {max_chars} 个字符。只输出改写后的提示词：不要标题，不要解释，\
不要用引号包住整段回答。"""

_PROMPTS: dict[tuple[Style, bool], str] = {
    ("qwen-image", False): _QWEN_EN,
    ("qwen-image", True): _QWEN_ZH,
    ("general", False): _GENERAL_EN,
    ("general", True): _GENERAL_ZH,
}


def style_for(model: str) -> Style:
    """The instruction style for an image model, given its catalog name or its family."""
    return "qwen-image" if "qwen" in model.lower() else "general"


def system_prompt(style: Style, language: Language, max_chars: int) -> str:
    """The system prompt for `style`, in Chinese for a Chinese prompt and in English otherwise
    (its first rule still asks for the prompt's own language)."""
    return _PROMPTS[(style, language == "zh")].format(max_chars=max_chars)


def plain_prompt(system: str, prompt: str, language: Language) -> str:
    """The whole input for a model with no chat template: instructions, prompt, answer cue."""
    if language == "zh":
        return f"{system}\n\n提示词：{prompt}\n改写后的提示词："
    return f"{system}\n\nPrompt: {prompt}\nRewritten prompt:"
